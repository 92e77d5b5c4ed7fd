"""Text classification with no download: paragraphs of CPython's own documentation
(`pydoc_data.topics`) labelled by the part of the documentation their topic comes from
(statements, expressions, the data model, built-in types, ...).

The reference repeats itself (`compound` holds every compound statement's topic again,
`specialnames` the data-model topics, `types` the built-in types): paragraphs that are
near-duplicates of each other (word 4-gram Jaccard >= `near_duplicate`) are grouped and a
group goes wholly into one split, so no test paragraph was seen, nearly verbatim, in
training. A paragraph found under two labels is dropped. Token ids are fixed-length
(`seq_len`, padded with `<pad>`, an `attention_mask` marks the real tokens) from the word
tokenizer fitted on the training split only.
"""


import re
from typing import Optional

import numpy as np
import torch

from kdlab.data._common import check_text_args
from kdlab.data.base import DataBundle, Split
from kdlab.data.text_corpus import pydoc_topic_texts
from kdlab.data.tokenizer import EOS, WordTokenizer, split_words
from kdlab.registry import DATASETS

PAD = "<pad>"
# Which part of the documentation each pydoc topic is cut from (Doc/reference/simple_stmts,
# compound_stmts and executionmodel; expressions and lexical_analysis; datamodel;
# library/stdtypes and string; library/pdb). Smaller parts are merged so that the largest
# class is at most ~4x the smallest.
FAMILIES: dict[str, tuple[str, ...]] = {
    "statements and execution model": (
        "assert", "assignment", "augassign", "break", "continue", "del", "global", "nonlocal", "import", "pass",
        "raise", "return", "yield", "if", "while", "for", "try", "with", "compound", "async", "else", "function",
        "class", "execmodel", "naming", "dynamic-features", "exceptions"),
    "expressions and literals": (
        "atom-identifiers", "atom-literals", "attribute-references", "await", "binary", "bitwise", "booleans", "calls",
        "comparisons", "conversions", "exprlists", "lambda", "operator-summary", "power", "shifting", "slicings",
        "subscriptions", "unary", "in", "lists", "dict", "identifiers", "id-classes", "strings", "integers",
        "floating", "imaginary", "numbers"),
    "data model": ("specialnames", "customization", "attribute-access", "callable-types", "context-managers",
                   "numeric-types", "sequence-types", "objects", "types"),
    "built-in types": ("typesseq", "typesseq-mutable", "typesmapping", "typesmethods", "typesmodules",
                       "typesfunctions", "string-methods", "truth", "specialattrs", "formatstrings",
                       "bltin-code-objects", "bltin-ellipsis-object", "bltin-null-object", "bltin-type-objects"),
    "debugger": ("debugger",),
}
_RULE = re.compile(r"^[*=\-~^]{3,}$")  # a heading's underline


def paragraphs(topics: dict[str, str], min_words: int) -> tuple[list[str], list[int]]:
    """(paragraph, family index) for every paragraph of at least `min_words` words of a topic
    in FAMILIES; line wraps are undone, headings dropped, exact repeats kept once (and dropped
    when they occur under two families)."""
    label_of = {t: i for i, (_, ts) in enumerate(FAMILIES.items()) for t in ts}
    seen: dict[str, int] = {}
    for name in sorted(topics):
        if name not in label_of:
            continue
        for block in topics[name].split("\n\n"):
            lines = [l for l in block.strip().splitlines() if not _RULE.match(l.strip())]
            text = " ".join(" ".join(lines).split())
            if len(re.findall(r"\w+", text)) < min_words:
                continue
            if seen.get(text, label_of[name]) != label_of[name]:
                seen[text] = -1  # the same paragraph under two families: no label is right
            else:
                seen[text] = label_of[name]
    kept = [(t, y) for t, y in seen.items() if y >= 0]
    return [t for t, _ in kept], [y for _, y in kept]


def shingles(text: str, n: int = 4) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}


def near_duplicate_groups(texts: list[str], threshold: float) -> list[int]:
    """A group id per text: texts whose shingle sets have Jaccard >= threshold share a group
    (transitively). Candidates are found through shared shingles, so it stays fast."""
    sets = [shingles(t) for t in texts]
    parent = list(range(len(texts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    by_shingle: dict[tuple, list[int]] = {}
    for i, s in enumerate(sets):
        for g in s:
            by_shingle.setdefault(g, []).append(i)
    for i, s in enumerate(sets):
        candidates = {j for g in s for j in by_shingle[g] if j > i}
        for j in candidates:
            if len(s & sets[j]) / len(s | sets[j]) >= threshold:
                parent[find(j)] = find(i)
    return [find(i) for i in range(len(texts))]


def split_groups(labels: np.ndarray, groups: np.ndarray, seed: int, val_fraction: float,
                 test_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of train, val and test: per class (a group counts for the class of its first
    paragraph), whole groups in seeded order go to test, then val, until each holds its
    fraction of the class's paragraphs; the rest train."""
    rng = np.random.default_rng(seed)
    first_label = {}
    for i, g in enumerate(groups):
        first_label.setdefault(g, labels[i])
    parts: tuple[list[int], list[int], list[int]] = ([], [], [])
    for c in np.unique(labels):
        ids = [g for g in first_label if first_label[g] == c]
        ids = [ids[k] for k in rng.permutation(len(ids))]
        total = int((labels == c).sum())
        quota = {2: round(total * test_fraction), 1: round(total * val_fraction)}
        filled = {2: 0, 1: 0}
        for g in ids:
            members = np.flatnonzero(groups == g).tolist()
            to = next((s for s in (2, 1) if filled[s] < quota[s]), 0)
            if to:
                filled[to] += len(members)
            parts[to].extend(members)
    return tuple(np.array(sorted(p), dtype=np.int64) for p in parts)


def encode(tok: WordTokenizer, texts: list[str], seq_len: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention_mask), each (N, seq_len): the first seq_len tokens, padded."""
    x = torch.full((len(texts), seq_len), pad_id, dtype=torch.long)
    for i, t in enumerate(texts):
        ids = tok.encode(t)[:seq_len]
        x[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return x, (x != pad_id).long()


@DATASETS.register(
    "pydoc_topics",
    "built-in text classification, no download: paragraphs of CPython's pydoc_data.topics labelled by "
    "documentation part (5 classes); near-duplicate paragraphs kept in one split; word tokens, seq_len ids "
    "with attention_mask",
    "CPython Doc/ (pydoc_data.topics)",
)
def pydoc_topics_dataset(
    seed: int = 0,
    seq_len: int = 64,
    max_vocab: int = 4000,
    min_freq: int = 2,
    min_words: int = 12,
    near_duplicate: float = 0.5,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    max_per_class: Optional[int] = None,
) -> DataBundle:
    check_text_args("pydoc_topics", seq_len, near_duplicate, val_fraction, test_fraction)
    texts, labels = paragraphs(pydoc_topic_texts(), min_words)
    y = np.array(labels, dtype=np.int64)
    groups = np.array(near_duplicate_groups(texts, near_duplicate))
    train_idx, val_idx, test_idx = split_groups(y, groups, seed, val_fraction, test_fraction)
    if max_per_class is not None:  # a smaller training set (e.g. for quick tests), classes capped alike
        rng = np.random.default_rng(seed + 1)
        train_idx = np.sort(np.concatenate([rng.permutation(train_idx[y[train_idx] == c])[:max_per_class]
                                            for c in np.unique(y)]))
    words = [w for i in train_idx for w in split_words(texts[i])]
    fitted = WordTokenizer.fit(words, max_vocab=max_vocab - 1, min_freq=min_freq)
    tok = WordTokenizer([*fitted.itos[:2], PAD, *fitted.itos[2:]])  # <pad> after <unk>, <eos>: id 2
    pad_id = tok.stoi[PAD]

    rng = np.random.default_rng(seed + 2)
    train_idx, val_idx, test_idx = (rng.permutation(i) for i in (train_idx, val_idx, test_idx))

    def split(idx: np.ndarray) -> Split:
        x, mask = encode(tok, [texts[i] for i in idx], seq_len, pad_id)
        return Split({"x": x, "attention_mask": mask, "y": torch.as_tensor(y[idx])})

    train, val, test = split(train_idx), split(val_idx), split(test_idx)
    names = list(FAMILIES)
    return DataBundle(
        train=train, val=val, test=test, num_classes=len(names), input_shape=(seq_len,), class_names=names,
        model_args={"vocab_size": len(tok)},
        meta={"tokenizer": tok, "pad_id": pad_id, "eos": EOS, "source": "pydoc_topics",
              "texts": {"train": [texts[i] for i in train_idx], "val": [texts[i] for i in val_idx],
                        "test": [texts[i] for i in test_idx]}},
    )
