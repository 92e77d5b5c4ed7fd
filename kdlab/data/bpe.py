"""A byte-level BPE tokenizer (GPT-2's scheme, the `tokenizers` library) trained on given texts
and used as a Hugging Face `PreTrainedTokenizerFast`, so teacher and student read one
vocabulary. It is trained once per key and kept in a folder (`save_pretrained`); processes
that need the same one at once queue on a file lock and the later ones read it back.

Byte-level: every string is encodable (no unknown token), and decoding gives the text back.
"""

from __future__ import annotations

import os
from pathlib import Path

from kdlab.errors import KdlabError
from kdlab.store.locks import file_lock, publish_folder

END = "<|endoftext|>"  # separates documents; also the padding token


def train_bpe(texts: list[str], vocab_size: int):
    """A PreTrainedTokenizerFast trained on `texts` with `vocab_size` tokens (256 bytes, the
    merges and END). Deterministic: the same texts give the same vocabulary and merges."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        from transformers import PreTrainedTokenizerFast
    except ImportError:
        raise KdlabError("a trained BPE tokenizer needs the transformers library: pip install 'kdlab[hf]'") from None
    if vocab_size < 258:
        raise KdlabError(f"vocab_size {vocab_size} is too small for byte-level BPE: give at least 258 (256 bytes, "
                         "the end-of-text token and one merge)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[END], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=END, bos_token=END, pad_token=END)


def cached_bpe(texts: list[str], vocab_size: int, folder: Path):
    """The tokenizer in `folder` if it was saved there, else trained on `texts` and saved
    (published whole: a reader sees all of it or nothing)."""
    from kdlab.data.hf_text import load_tokenizer

    folder = Path(folder)
    with file_lock(folder.parent / f".{folder.name}.lock"):
        if not (folder / "tokenizer.json").is_file():
            publish_folder(folder, lambda tmp: train_bpe(texts, vocab_size).save_pretrained(str(tmp)))
    return load_tokenizer(str(folder))
