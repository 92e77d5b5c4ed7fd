"""Text tokenised by a Hugging Face tokenizer from a local folder (never downloaded).

Classification: `x` the padded token ids, `attention_mask` 1 on tokens, 0 on padding.
Language modelling: ids of max_length + 1 tokens give `x` = all but the last and `y` = all but
the first (the next token), with y = -100 (ignored by the loss and the metrics) where the
target is padding.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import Tensor

from kdlab.data.batching import IGNORE_INDEX
from kdlab.errors import KdlabError



def load_tokenizer(path: str):
    """A tokenizer saved with `save_pretrained` in a local folder, with a padding token."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise KdlabError(f"tokenizer folder '{path}' does not exist; give data.params.tokenizer_path a folder written "
                         "by save_pretrained (tokenizers are never downloaded)")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise KdlabError("tokenised text needs the transformers library: pip install 'kdlab[hf]'") from None
    try:
        tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except Exception as e:  # transformers raises many kinds for a folder it cannot read
        text = str(e).strip().splitlines()
        raise KdlabError(f"cannot load the tokenizer in '{path}': {text[0][:200] if text else type(e).__name__}") from None
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise KdlabError(f"the tokenizer in '{path}' has no padding (or end-of-text) token; give it a pad_token")
        tok.pad_token = tok.eos_token
    return tok


def fingerprint(tok) -> str:
    """Identity of a tokenizer's vocabulary (token -> id), to tell two tokenizers apart."""
    items = sorted(tok.get_vocab().items())
    return hashlib.sha256(repr(items).encode()).hexdigest()[:16]


def folder_fingerprint(path) -> str | None:
    """The fingerprint of the tokenizer saved in a model folder, or None when it holds none."""
    p = Path(path).expanduser()
    if not any((p / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
        return None
    return fingerprint(load_tokenizer(str(p)))


def encode(tok, text: str, max_length: int, task: str) -> dict[str, Tensor]:
    """One text as a sample: ids and attention mask (and next-token targets for `lm`)."""
    if not isinstance(text, str):
        raise KdlabError(f"a text column holds a {type(text).__name__}, not text: map x to the column of strings")
    length = max_length + 1 if task == "lm" else max_length
    enc = tok(text, max_length=length, truncation=True, padding="max_length")
    ids = torch.tensor(enc["input_ids"], dtype=torch.long)
    mask = torch.tensor(enc["attention_mask"], dtype=torch.long)
    if task != "lm":
        return {"x": ids, "attention_mask": mask}
    y = ids[1:].clone()
    y[mask[1:] == 0] = IGNORE_INDEX
    return {"x": ids[:-1], "y": y, "attention_mask": mask[:-1]}


def encode_words(tok, words, tags, max_length: int) -> dict[str, Tensor]:
    """Pre-split words and one tag per word as a sample: sub-token ids, attention mask, and
    `y` the word's tag on its first sub-token, -100 on the other sub-tokens, special tokens and
    padding (the usual convention: each word is scored once). Words cut by truncation lose their tag."""
    if not isinstance(words, (list, tuple)) or not all(isinstance(w, str) for w in words):
        raise KdlabError(f"a tokens column holds a {type(words).__name__}, not a list of words: map x to the column "
                         "of pre-split words (e.g. tokens)")
    if len(tags) != len(words):
        raise KdlabError(f"a row has {len(words)} words but {len(tags)} tags: the tags column needs one tag per word")
    enc = tok(list(words), is_split_into_words=True, max_length=max_length, truncation=True, padding="max_length")
    y = torch.full((max_length,), IGNORE_INDEX, dtype=torch.long)
    previous = None
    for pos, word in enumerate(enc.word_ids()):
        if word is not None and word != previous:
            y[pos] = int(tags[word])
        previous = word
    return {"x": torch.tensor(enc["input_ids"], dtype=torch.long),
            "attention_mask": torch.tensor(enc["attention_mask"], dtype=torch.long), "y": y}
