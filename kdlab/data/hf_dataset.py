"""Tables on local disk through Hugging Face `datasets`: a folder written by `save_to_disk`
(`load_from_disk`), or a parquet, JSON lines, CSV or plain-text file (one sample per line).

`columns` maps kdlab's keys to the table's columns: `x` the input (numbers, token ids, or text
tokenised by the `tokenizer_path` folder), `y` the class label (classification; language models
predict the next token of x instead); other keys (e.g. a `loss_mask`) are passed through.
Token classification (`task: token_classification`, e.g. NER): `x` a column of pre-split words,
`y` one tag per word (integers 0..K-1, or strings numbered in sorted order); each word's tag goes
to its first sub-token, -100 to the rest (see `hf_text.encode_words`).
`datasets` keeps the table memory-mapped (Arrow; files are converted once into its cache,
`cache`, default HF_DATASETS_CACHE), so a streamed split reads only the rows a batch needs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
from torch import Tensor

from kdlab.data._common import check_fractions, train_val_indices
from kdlab.data.base import DataBundle, Split, check_classes, check_split_sizes, split_indices
from kdlab.data.hf_text import encode, encode_words, fingerprint, load_tokenizer
from kdlab.data.stream import SampleSource, StreamSplit, materialize
from kdlab.errors import KdlabError
from kdlab.registry import DATASETS

FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv", ".txt": "text"}


def open_table(path: str, fmt: str, split: str, what: str = "path", cache_dir: Optional[str] = None):
    """The `datasets.Dataset` at `path` (format `auto`: by the folder or file suffix)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise KdlabError(f"data.params.{what} '{path}' does not exist; give a folder written by save_to_disk or a "
                         f"{', '.join(FORMATS)} file")
    if fmt == "auto":
        fmt = "disk" if p.is_dir() else FORMATS.get(p.suffix.lower(), "")
        if not fmt:
            raise KdlabError(f"cannot tell the format of '{path}' from its suffix; set data.params.format to "
                             "parquet, json, csv or text")
    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    try:
        import datasets
    except ImportError:
        raise KdlabError("hf_dataset needs the datasets library: pip install 'kdlab[data]'") from None
    datasets.disable_progress_bars()
    try:
        if fmt == "disk":
            table = datasets.load_from_disk(str(p))
        else:
            table = datasets.load_dataset(fmt, data_files=str(p), split="train", cache_dir=cache_dir)
    except Exception as e:  # datasets raises many kinds for a file it cannot read
        text = str(e).strip().splitlines()
        raise KdlabError(f"cannot read '{path}' as {fmt}: {text[0][:200] if text else type(e).__name__}") from None
    if isinstance(table, datasets.DatasetDict):
        if split not in table:
            raise KdlabError(f"'{path}' holds the splits {', '.join(table)}, not '{split}'; set data.params.split")
        table = table[split]
    return table


def check_columns(table, columns: dict[str, str], path: str, task: str) -> None:
    needed = ["x"] + (["y"] if task != "lm" else [])
    lacking = [k for k in needed if k not in columns]
    if lacking:
        raise KdlabError(f"data.params.columns needs {' and '.join(lacking)} (e.g. columns: {{x: text, y: label}})")
    for key, col in columns.items():
        if col not in table.column_names:
            raise KdlabError(f"data.params.columns.{key}: '{path}' has no column '{col}' (its columns: "
                             f"{', '.join(table.column_names)})")


class TableSource(SampleSource):
    """Rows of a memory-mapped table as samples; text columns tokenised when read."""

    def __init__(self, table, columns: dict[str, str], task: str, tokenizer=None, max_length: int = 128, tags=None):
        """`tags`: (count, names, name -> id) of another source (a test table numbers its tags as train does)."""
        self.table, self.columns, self.task = table, columns, task
        self.tokenizer, self.max_length = tokenizer, max_length
        self.labels = None
        self.tag_names: Optional[list[str]] = None
        if task == "token_classification":
            own = word_tags(table, columns["y"])
            self.num_tags, self.tag_names, self._tag_ids = tags or own
            if tags is not None and ((own[1] is None) != (tags[1] is None) or set(own[2]) - set(tags[2])
                                     or own[0] > tags[0] and own[1] is None):
                raise KdlabError(f"column '{columns['y']}' of the test table holds tags the training table does not: "
                                 "both tables need one tag set")
        if task == "classification":
            self.labels = np.asarray(table.data.column(columns["y"]).to_numpy())
            if self.labels.dtype.kind not in "iub" or (len(self.labels) and self.labels.min() < 0):
                raise KdlabError(f"column '{columns['y']}' holds {self.labels.dtype} labels; class labels must be "
                                 "integers 0..K-1")

    def __len__(self) -> int:
        return len(self.table)

    def read(self, i: int) -> dict[str, Tensor]:
        row = self.table[int(i)]
        out: dict[str, Tensor] = {}
        for key, col in self.columns.items():
            value = row[col]
            if key == "x" and self.task == "token_classification":
                tags = [self._tag_ids[t] for t in row[self.columns["y"]]] if self.tag_names else row[self.columns["y"]]
                out.update(encode_words(self.tokenizer, value, tags, self.max_length))
            elif key == "y" and self.task == "token_classification":
                continue  # read with the words, aligned to their sub-tokens
            elif key == "x" and isinstance(value, str):
                out.update(encode(self.tokenizer, value, self.max_length, self.task))
            elif key != "y" or self.task == "classification":
                out[key] = as_tensor(value, col)
        if self.task == "classification":
            out["y"] = out["y"].long()
        return out


def word_tags(table, column: str) -> tuple[int, Optional[list[str]], dict]:
    """(number of tags, tag names or None, name -> id) of a column of per-word tag lists:
    integer tags are their own ids (K = the largest + 1), string tags are numbered in sorted order."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = table.data.column(column)
    if not pa.types.is_list(col.type) and not pa.types.is_large_list(col.type):
        raise KdlabError(f"column '{column}' holds {col.type} values; token classification needs one list of tags per "
                         "row (one tag per word)")
    flat = pc.list_flatten(col)
    if pa.types.is_string(flat.type) or pa.types.is_large_string(flat.type):
        names = sorted(str(v) for v in pc.unique(flat).to_pylist() if v is not None)
        return len(names), names, {n: i for i, n in enumerate(names)}
    if not pa.types.is_integer(flat.type):
        raise KdlabError(f"column '{column}' holds lists of {flat.type}; tags must be integers 0..K-1 or strings")
    lo, hi = (pc.min_max(flat)[k].as_py() for k in ("min", "max"))
    if lo is not None and lo < 0:
        raise KdlabError(f"column '{column}' holds the tag {lo}; integer tags must be 0..K-1")
    return (hi + 1 if hi is not None else 0), None, {}


def as_tensor(value, column: str) -> Tensor:
    try:
        arr = np.asarray(value)
    except ValueError:
        arr = np.asarray([], dtype=object)
    if arr.dtype.kind not in "biuf":
        raise KdlabError(f"column '{column}' holds {type(value).__name__} values, not numbers (text needs "
                         "data.params.tokenizer_path, on the column mapped to x)")
    t = torch.from_numpy(arr.copy())
    return t.float() if t.is_floating_point() else t.long() if arr.dtype.kind in "iu" else t


@DATASETS.register(
    "hf_dataset",
    "a table on local disk via Hugging Face datasets (save_to_disk folder, parquet, JSON lines, CSV, text lines) "
    "with a column mapping; text tokenised by a local tokenizer folder; streamable",
)
def build_hf_dataset(
    path: str,
    columns: dict[str, str],
    seed: int = 0,
    format: Literal["auto", "disk", "parquet", "json", "csv", "text"] = "auto",
    task: Literal["classification", "lm", "token_classification"] = "classification",
    tokenizer_path: Optional[str] = None,
    max_length: int = 128,
    split: str = "train",
    cache: Optional[str] = None,
    test_path: Optional[str] = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    stream=None,
) -> DataBundle:
    """Seeded train/val/test split of the table (stratified by label for classification); with
    `test_path`, that table is the test split and val is carved from `path`."""
    check_fractions(val_fraction, None if test_path else test_fraction)
    if max_length < 2:
        raise KdlabError(f"data.params.max_length={max_length} must be at least 2")
    tok = load_tokenizer(tokenizer_path) if tokenizer_path else None
    table = open_table(path, format, split, cache_dir=cache)
    check_columns(table, columns, path, task)
    if isinstance(table[0][columns["x"]], str) and tok is None:
        raise KdlabError(f"column '{columns['x']}' of '{path}' holds text: give data.params.tokenizer_path, a folder "
                         "with a Hugging Face tokenizer (save_pretrained)")
    if task == "lm" and tok is None:
        raise KdlabError("task lm reads text: map x to a text column and give data.params.tokenizer_path")
    if task == "token_classification" and (tok is None or not tok.is_fast):
        raise KdlabError("task token_classification aligns word tags to sub-tokens: give data.params.tokenizer_path, "
                         "a folder with a fast Hugging Face tokenizer (tokenizer.json)")
    source = TableSource(table, columns, task, tok, max_length)
    train, val, test = table_splits(source, seed, val_fraction, test_fraction, test_path,
                                    lambda p: open_table(p, format, split, "test_path", cache))
    if stream is None or not stream(source.nbytes()):
        loaded = {id(s): materialize(s) for s in (train, val, test)}  # val may be test: read once
        train, val, test = (loaded[id(s)] for s in (train, val, test))
    return bundle(source, train, val, test, tok, tokenizer_path, path)


def table_splits(source: TableSource, seed, val_fraction, test_fraction, test_path, open_test):
    labels = source.labels if source.labels is not None else np.zeros(len(source), dtype=np.int64)
    stratify = source.labels is not None
    if test_path is None:
        parts = split_indices(labels, seed, val_fraction, test_fraction, stratify)
        splits = [StreamSplit(source, i) for i in parts]
        check_split_sizes(dict(zip(("train", "val", "test"), splits)),
                          {"train": None, "val": val_fraction, "test": test_fraction}, len(source), stratify)
        if stratify:
            check_classes(Split({"y": torch.as_tensor(labels[parts[0]])}))
        return splits
    test_table = open_test(test_path)
    check_columns(test_table, source.columns, test_path, source.task)
    tags = (source.num_tags, source.tag_names, source._tag_ids) if source.task == "token_classification" else None
    test = StreamSplit(TableSource(test_table, source.columns, source.task, source.tokenizer, source.max_length, tags))
    train_idx, val_idx = train_val_indices(labels, seed, val_fraction)
    return StreamSplit(source, train_idx), (test if val_idx is None else StreamSplit(source, val_idx)), test


def bundle(source: TableSource, train, val, test, tok, tokenizer: Optional[str], path: str) -> DataBundle:
    first = source.read(0)
    meta: dict = {"path": str(path)}
    model_args = {}
    if tok is not None:
        meta["hf_tokenizer"] = {"path": str(tokenizer), "size": len(tok), "fingerprint": fingerprint(tok)}
        model_args["vocab_size"] = len(tok)
    if source.task == "lm":
        num_classes = len(tok)
    elif source.task == "token_classification":
        num_classes = source.num_tags
    else:
        num_classes = int(source.labels.max()) + 1 if len(source.labels) else 0
    return DataBundle(train=train, val=val, test=test, num_classes=num_classes, input_shape=tuple(first["x"].shape),
                      task=source.task, class_names=source.tag_names, model_args=model_args, meta=meta)
