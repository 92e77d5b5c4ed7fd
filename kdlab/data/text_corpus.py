"""Plain-text corpora for next-token language modelling.

`text` (one file) is split contiguously: train, then val, then test. That keeps the held-out
parts out of the training *positions* but not out of its *text*: a file that repeats passages
(a manual, boilerplate) repeats them across the cut. `pydoc` (CPython's reference, many topics)
therefore holds out whole topics and drops held-out paragraphs repeated in other topics by
default (`split: topic`, see `lm_topic_split.py`): 36% of the test 20-grams of the contiguous
cut occur verbatim in its training part, 0-0.1% of the topic split's (split seeds 0-2).
`meta["heldout_20gram_overlap"]` records that fraction for val and test. The tokenizer is fitted on the training part only
(val/test words it never saw become `<unk>`), and each split is cut into non-overlapping
sequences of `seq_len` tokens: `x` is a window of the stream, `y` the same window shifted by
one token.
"""


from pathlib import Path
from typing import Optional

import torch

from kdlab.data.base import DataBundle, Split
from kdlab.data.tokenizer import WordTokenizer, split_words
from kdlab.data.lm_topic_split import ngram_overlap, topic_split
from kdlab.errors import KdlabError
from kdlab.registry import DATASETS


def chunk_stream(ids: torch.Tensor, seq_len: int) -> Split:
    """(x, y) windows of `seq_len` tokens; y is x shifted by one. The tail that does not fill a
    window is dropped."""
    n = (len(ids) - 1) // seq_len
    x = ids[: n * seq_len].view(n, seq_len)
    y = ids[1 : n * seq_len + 1].view(n, seq_len)
    return Split({"x": x.clone(), "y": y.clone()})


def check_lm_args(source: str, seq_len: int, val_fraction: float, test_fraction: float, max_tokens: Optional[int]) -> None:
    if seq_len < 1:
        raise KdlabError(f"{source}: seq_len must be >= 1, got {seq_len}")
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise KdlabError(f"{source}: val_fraction and test_fraction must be in (0, 1) and sum below 1")
    if max_tokens is not None and max_tokens < 1:
        raise KdlabError(f"{source}: max_tokens must be >= 1 (or null for the whole corpus), got {max_tokens}")


def contiguous_split(words: list[str], val_fraction: float, test_fraction: float) -> tuple[list[str], list[str], list[str]]:
    n = len(words)
    n_val, n_test = int(n * val_fraction), int(n * test_fraction)
    n_train = n - n_val - n_test
    return words[:n_train], words[n_train : n_train + n_val], words[n_train + n_val :]


def lm_bundle(
    parts: tuple[list[str], list[str], list[str]],
    source: str,
    seq_len: int,
    max_vocab: int,
    min_freq: int,
    lowercase: bool,
    meta: Optional[dict] = None,
) -> DataBundle:
    """Windows of `seq_len` tokens from (train, val, test) token lists; tokenizer fitted on train."""
    train_words, val_words, test_words = parts
    n = sum(len(p) for p in parts)
    # Each split needs at least one full window (seq_len + 1 tokens, the target is shifted).
    if min(len(p) for p in parts) < seq_len + 1:
        raise KdlabError(
            f"{source}: {n} tokens ({len(train_words)}/{len(val_words)}/{len(test_words)} train/val/test) are "
            f"too few for seq_len {seq_len}; use a longer text, a smaller seq_len or larger val/test fractions."
        )
    tok = WordTokenizer.fit(train_words, max_vocab=max_vocab, min_freq=min_freq, lowercase=lowercase)
    ids = [torch.tensor(tok.ids(p), dtype=torch.long) for p in parts]
    train, val, test = (chunk_stream(p, seq_len) for p in ids)
    heldout = torch.cat(ids[1:])
    unk_rate = float((heldout == tok.unk_id).float().mean())
    overlap = {k: ngram_overlap(train_words, p) for k, p in (("val", val_words), ("test", test_words))}
    return DataBundle(
        train=train,
        val=val,
        test=test,
        num_classes=len(tok),
        input_shape=(seq_len,),
        task="lm",
        model_args={"vocab_size": len(tok)},
        meta={"tokenizer": tok, "source": source, "tokens": n, "heldout_unk_rate": unk_rate,
              "heldout_20gram_overlap": overlap, **(meta or {})},
    )


@DATASETS.register(
    "text",
    "plain-text file (`path`) for next-token LM: word tokenizer fitted on the train part, "
    "contiguous train/val/test split, windows of `seq_len` tokens",
)
def text_dataset(
    path: str,
    seed: int = 0,
    seq_len: int = 35,
    max_vocab: int = 10000,
    min_freq: int = 1,
    lowercase: bool = True,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    max_tokens: Optional[int] = None,
    encoding: str = "utf-8",
) -> DataBundle:
    # The split is contiguous and deterministic: `seed` (data.split_seed) is not used.
    p = Path(path).expanduser()
    if not p.is_file():
        raise KdlabError(f"text dataset: file '{path}' does not exist; set data.params.path to a plain-text file.")
    try:
        text = p.read_text(encoding=encoding)
    except UnicodeDecodeError as e:
        raise KdlabError(f"text dataset: '{path}' is not {encoding} text ({e.reason}); set data.params.encoding.") from None
    source = f"text '{path}'"
    check_lm_args(source, seq_len, val_fraction, test_fraction, max_tokens)
    words = split_words(text, lowercase)[:max_tokens]
    return lm_bundle(contiguous_split(words, val_fraction, test_fraction), source, seq_len, max_vocab, min_freq, lowercase)


def pydoc_topic_texts() -> dict[str, str]:
    """CPython's English reference text (`pydoc_data.topics`, ~0.5 MB): topic name -> text."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip it
        raise KdlabError(
            "pydoc datasets: this Python has no pydoc_data.topics; use the `text` (or `npz`) dataset with a local file."
        ) from None
    return dict(topics)


def pydoc_text() -> str:
    """The pydoc reference text, topics in name order."""
    topics = pydoc_topic_texts()
    return "\n".join(topics[k] for k in sorted(topics))


@DATASETS.register(
    "pydoc",
    "built-in English corpus for LM, no download: CPython's pydoc_data.topics reference text "
    "(~0.5 MB, ~123k word, punctuation and line-end tokens); held-out topics with repeated paragraphs "
    "dropped (`split: topic`, default) or the `text` dataset's contiguous cut (`split: contiguous`)",
    "CPython Doc/ (pydoc_data.topics)",
)
def pydoc_dataset(
    seed: int = 0,
    seq_len: int = 35,
    max_vocab: int = 10000,
    min_freq: int = 1,
    lowercase: bool = True,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    max_tokens: Optional[int] = None,
    split: str = "topic",
    near_duplicate: float = 0.2,
) -> DataBundle:
    check_lm_args("pydoc", seq_len, val_fraction, test_fraction, max_tokens)
    if split == "contiguous":
        words = split_words(pydoc_text(), lowercase)[:max_tokens]
        return lm_bundle(contiguous_split(words, val_fraction, test_fraction), "pydoc", seq_len, max_vocab, min_freq,
                         lowercase, {"split": split})
    if split != "topic":
        raise KdlabError(f"pydoc: split must be 'topic' or 'contiguous', got '{split}'")
    # data.split_seed chooses the held-out topics.
    train, val, test, record = topic_split(pydoc_topic_texts(), seed, val_fraction, test_fraction, near_duplicate, lowercase)
    if max_tokens is not None:  # each split capped in the same proportions as a contiguous cut
        n_val, n_test = int(max_tokens * val_fraction), int(max_tokens * test_fraction)
        train, val, test = train[: max_tokens - n_val - n_test], val[:n_val], test[:n_test]
    return lm_bundle((train, val, test), "pydoc", seq_len, max_vocab, min_freq, lowercase, {"split": split, **record})
