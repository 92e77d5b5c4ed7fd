"""Plain-text corpora for next-token language modelling.

The token stream is split contiguously (train, then val, then test: no sentence of the test
text is seen in training), the tokenizer is fitted on the training part only (val/test words
it never saw become `<unk>`), and each split is cut into non-overlapping sequences of
`seq_len` tokens: `x` is a window of the stream, `y` the same window shifted by one token.
"""


from pathlib import Path
from typing import Optional

import torch

from kdlab.data.base import DataBundle, Split
from kdlab.data.tokenizer import WordTokenizer, split_words
from kdlab.errors import KdlabError
from kdlab.registry import DATASETS


def chunk_stream(ids: torch.Tensor, seq_len: int) -> Split:
    """(x, y) windows of `seq_len` tokens; y is x shifted by one. The tail that does not fill a
    window is dropped."""
    n = (len(ids) - 1) // seq_len
    x = ids[: n * seq_len].view(n, seq_len)
    y = ids[1 : n * seq_len + 1].view(n, seq_len)
    return Split({"x": x.clone(), "y": y.clone()})


def lm_bundle(
    text: str,
    source: str,
    seq_len: int,
    max_vocab: int,
    min_freq: int,
    lowercase: bool,
    val_fraction: float,
    test_fraction: float,
    max_tokens: Optional[int],
) -> DataBundle:
    if seq_len < 1:
        raise KdlabError(f"{source}: seq_len must be >= 1, got {seq_len}")
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise KdlabError(f"{source}: val_fraction and test_fraction must be in (0, 1) and sum below 1")
    if max_tokens is not None and max_tokens < 1:
        raise KdlabError(f"{source}: max_tokens must be >= 1 (or null for the whole corpus), got {max_tokens}")
    words = split_words(text, lowercase)
    if max_tokens is not None:
        words = words[:max_tokens]
    n = len(words)
    n_val, n_test = int(n * val_fraction), int(n * test_fraction)
    n_train = n - n_val - n_test
    # Each split needs at least one full window (seq_len + 1 tokens, the target is shifted).
    if min(n_train, n_val, n_test) < seq_len + 1:
        raise KdlabError(
            f"{source}: {n} tokens are too few for seq_len {seq_len} with val/test fractions "
            f"{val_fraction}/{test_fraction}; use a longer text, a smaller seq_len or larger fractions."
        )
    train_words = words[:n_train]
    tok = WordTokenizer.fit(train_words, max_vocab=max_vocab, min_freq=min_freq, lowercase=lowercase)
    ids = torch.tensor(tok.ids(words), dtype=torch.long)
    parts = [ids[:n_train], ids[n_train : n_train + n_val], ids[n_train + n_val :]]
    train, val, test = (chunk_stream(p, seq_len) for p in parts)
    unk_rate = float((ids[n_train:] == tok.unk_id).float().mean())
    return DataBundle(
        train=train,
        val=val,
        test=test,
        num_classes=len(tok),
        input_shape=(seq_len,),
        task="lm",
        model_args={"vocab_size": len(tok)},
        meta={"tokenizer": tok, "source": source, "tokens": n, "heldout_unk_rate": unk_rate},
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
    return lm_bundle(text, f"text '{path}'", seq_len, max_vocab, min_freq, lowercase, val_fraction, test_fraction, max_tokens)


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
    "(~0.5 MB, ~123k word, punctuation and line-end tokens); same options as `text`",
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
) -> DataBundle:
    return lm_bundle(pydoc_text(), "pydoc", seq_len, max_vocab, min_freq, lowercase, val_fraction, test_fraction, max_tokens)
