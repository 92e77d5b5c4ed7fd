"""`pydoc_bpe`: CPython's own documentation (`pydoc_data.topics`, no download) as documents for
next-token language modelling, split by document, with a byte-level BPE tokenizer trained on
the training documents only.

Documents are the pydoc topics. The reference repeats itself (`compound` holds every compound
statement's topic again, `specialnames` the data-model topics), so a paragraph that is a near
duplicate (word 4-gram Jaccard >= `near_duplicate`) of one met before, in topic-name order, is
dropped: every paragraph is kept in one document only. Whole documents then go, in seeded
order, to test and to validation while they fit each split's share of the words; the rest
train. No test paragraph is thus seen, nearly verbatim, in training (`meta` reports the share
of test word 20-grams that occur in the training text anyway).

The tokenizer is trained on the training documents (so the split seed fixes it too) and kept
in `tokenizer_dir` (default `<store>/tokenizers/<key>`, the store being $KDLAB_HOME or
./runs): built once, reused by every run, teacher and student alike.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from kdlab.data._common import check_text_args
from kdlab.data.base import DataBundle
from kdlab.data.bpe import END, cached_bpe
from kdlab.data.hf_text import fingerprint
from kdlab.data.pydoc_topics import near_duplicate_groups
from kdlab.data.text_corpus import chunk_stream, pydoc_topic_texts
from kdlab.errors import KdlabError
from kdlab.registry import DATASETS
from kdlab.store.runstore import default_store_root

SPLITS = ("train", "val", "test")


def documents(topics: dict[str, str], near_duplicate: float) -> dict[str, str]:
    """Topic name -> its text without the paragraphs that nearly repeat an earlier one (topics
    in name order); topics left empty are dropped."""
    paras, owner = [], []
    for name in sorted(topics):
        for block in topics[name].split("\n\n"):
            if block.strip():
                paras.append(block.strip("\n"))
                owner.append(name)
    groups = near_duplicate_groups(paras, near_duplicate)
    seen: set[int] = set()
    kept: dict[str, list[str]] = {}
    for text, name, g in zip(paras, owner, groups):
        if g not in seen:
            seen.add(g)
            kept.setdefault(name, []).append(text)
    return {name: "\n\n".join(ps) for name, ps in kept.items()}


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def split_documents(docs: dict[str, str], seed: int, val_fraction: float, test_fraction: float) -> dict[str, list[str]]:
    """Document names per split: in seeded order, a document goes to test, else val, if it fits
    what is left of that split's share of the words; every other document trains."""
    names = sorted(docs)
    sizes = {n: len(words(docs[n])) for n in names}
    total = sum(sizes.values())
    quota = {"test": test_fraction * total, "val": val_fraction * total}
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    filled = {"test": 0, "val": 0}
    for i in np.random.default_rng(seed).permutation(len(names)):
        n = names[i]
        to = next((s for s in ("test", "val") if filled[s] + sizes[n] <= quota[s]), "train")
        if to != "train":
            filled[to] += sizes[n]
        out[to].append(n)
    return {s: sorted(v) for s, v in out.items()}


def ngram_overlap(heldout: list[str], train: list[str], n: int = 20) -> float:
    """The share of the held-out texts' word n-grams that occur in the training texts."""
    def grams(texts):
        out = set()
        for t in texts:
            w = words(t)
            out.update(tuple(w[i : i + n]) for i in range(len(w) - n + 1))
        return out
    held = grams(heldout)
    return len(held & grams(train)) / max(1, len(held))


def tokenizer_folder(tokenizer_dir: Optional[str], record: dict) -> Path:
    key = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(tokenizer_dir).expanduser() if tokenizer_dir else default_store_root() / "tokenizers"
    return root / key


@DATASETS.register(
    "pydoc_bpe",
    "built-in LM corpus, no download: CPython's pydoc_data.topics as documents (near-duplicate paragraphs kept "
    "once), split by document, byte-level BPE tokenizer trained on the training documents and stored once",
    "CPython Doc/ (pydoc_data.topics)",
)
def pydoc_bpe_dataset(
    seed: int = 0,
    seq_len: int = 64,
    tokens: int = 2048,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    near_duplicate: float = 0.5,
    tokenizer_dir: Optional[str] = None,
) -> DataBundle:
    check_text_args("pydoc_bpe", seq_len, near_duplicate, val_fraction, test_fraction)
    topics = pydoc_topic_texts()
    docs = documents(topics, near_duplicate)
    parts = split_documents(docs, seed, val_fraction, test_fraction)
    texts = {s: [docs[n] for n in parts[s]] for s in SPLITS}
    corpus = hashlib.sha256(json.dumps(topics, sort_keys=True).encode()).hexdigest()[:16]
    import tokenizers

    record = {"corpus": corpus, "train_documents": parts["train"], "near_duplicate": near_duplicate,
              "vocab_size": tokens, "tokenizers": tokenizers.__version__}
    folder = tokenizer_folder(tokenizer_dir, record)
    tok = cached_bpe(texts["train"], tokens, folder)
    end = tok.convert_tokens_to_ids(END)

    def stream(split: str) -> torch.Tensor:
        ids: list[int] = []
        for t in texts[split]:
            ids.extend(tok(t)["input_ids"])
            ids.append(end)
        return torch.tensor(ids, dtype=torch.long)

    streams = {s: stream(s) for s in SPLITS}
    short = [s for s in SPLITS if len(streams[s]) < seq_len + 1]
    if short:
        raise KdlabError(f"pydoc_bpe: the {', '.join(short)} split holds too few tokens for seq_len {seq_len}; "
                         "lower seq_len or raise val_fraction/test_fraction")
    train, val, test = (chunk_stream(streams[s], seq_len) for s in SPLITS)
    return DataBundle(
        train=train, val=val, test=test, num_classes=len(tok), input_shape=(seq_len,), task="lm",
        model_args={"vocab_size": len(tok)},
        meta={"hf_tokenizer": {"path": str(folder), "size": len(tok), "fingerprint": fingerprint(tok)},
              "source": "pydoc_bpe", "documents": parts, "tokens": {s: len(streams[s]) for s in SPLITS},
              "test_20gram_overlap": ngram_overlap(texts["test"], texts["train"]),
              "val_20gram_overlap": ngram_overlap(texts["val"], texts["train"])},
    )
