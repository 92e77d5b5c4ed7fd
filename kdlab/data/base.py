"""In-memory datasets: a bundle of seeded train/val/test splits held as tensors.

Every built-in and file dataset produces a `DataBundle`. Splits are dicts of equally long
tensors (`x`, `y` for classification; other keys for other tasks) that are moved to the
training device once; batches are cut from them by index and augmented as whole batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import math

import numpy as np
import torch
from torch import Tensor

from kdlab.errors import KdlabError

# (x, generator) -> x, applied to a whole training batch on its device.
BatchTransform = Callable[[Tensor, torch.Generator], Tensor]


@dataclass
class Split:
    tensors: dict[str, Tensor]

    def __post_init__(self):
        sizes = {k: len(v) for k, v in self.tensors.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"split tensors differ in length: {sizes}")

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, key: str) -> Tensor:
        return self.tensors[key]

    def to(self, device) -> "Split":
        return Split({k: v.to(device) for k, v in self.tensors.items()})

    def subset(self, index: Tensor) -> "Split":
        return Split({k: v[index] for k, v in self.tensors.items()})

    def head(self, n: int) -> dict[str, Tensor]:
        """The first n samples as a batch (unprepared)."""
        return {k: v[:n] for k, v in self.tensors.items()}

    # Shared with the streamed `StreamSplit`, for code that reads a whole split either way.
    def rows(self, index: Tensor) -> dict[str, Tensor]:
        """Samples `index` as a batch (unprepared)."""
        return {k: v[index] for k, v in self.tensors.items()}

    def chunks(self, size: int):
        """Every sample in order, `size` at a time, as batches (unprepared)."""
        for a in range(0, len(self), size):
            yield {k: v[a : a + size] for k, v in self.tensors.items()}

    def labels(self) -> Optional[Tensor]:
        return self.tensors.get("y")


@dataclass
class DataBundle:
    train: Split
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, ...]
    task: str = "classification"
    class_names: Optional[list[str]] = None
    # superclass[c] is the superclass of class c, for data with a class hierarchy.
    superclass: Optional[list[int]] = None
    # Applied to every batch (train and eval), e.g. uint8 -> normalised float.
    prepare: Optional[Callable[[Tensor], Tensor]] = None
    # Applied to training batches only.
    augment: Optional[BatchTransform] = None
    # Extra keyword arguments every model builder gets for this data (e.g. num_users,
    # num_items for ranking, vocab_size for language modelling).
    model_args: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def to(self, device) -> "DataBundle":
        import dataclasses

        return dataclasses.replace(
            self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device)
        )


def split_indices(
    y: np.ndarray, seed: int, val_fraction: float = 0.1, test_fraction: float = 0.2, stratify: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded (stratified by `y`) train/val/test sample indices, each split in shuffled order.
    The split of `split_arrays`, also used by the streamed sources so that streaming and
    in-memory runs see the same samples in the same places."""
    n = len(y)
    if not 0 <= val_fraction < 1 or not 0 < test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError("val_fraction and test_fraction must be in [0, 1) and sum below 1")
    rng = np.random.default_rng(seed)
    idx_train, idx_val, idx_test = [], [], []
    groups = [np.flatnonzero(y == c) for c in np.unique(y)] if stratify else [np.arange(n)]
    for g in groups:
        g = rng.permutation(g)
        n_test = int(round(len(g) * test_fraction))
        n_val = int(round(len(g) * val_fraction))
        idx_test.append(g[:n_test])
        idx_val.append(g[n_test : n_test + n_val])
        idx_train.append(g[n_test + n_val :])
    order = (rng.permutation(np.concatenate(p)) if p else np.arange(0) for p in (idx_train, idx_val, idx_test))
    return tuple(order)  # type: ignore[return-value]


def split_arrays(
    x: np.ndarray,
    y: np.ndarray,
    seed: int,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    extra: Optional[dict[str, np.ndarray]] = None,
    stratify: bool = True,
    names: tuple[str, str, str] = ("train", "val", "test"),
) -> tuple[Split, Split, Split]:
    """Seeded, stratified train/val/test split of arrays into tensor splits. KdlabError when
    a split with a fraction above 0 (or train) is empty, or, stratified, train has one class;
    `names` name the three splits in that message."""

    def make(idx):
        tensors = {"x": torch.as_tensor(x[idx]), "y": torch.as_tensor(y[idx]).long()}
        for k, v in (extra or {}).items():
            tensors[k] = torch.as_tensor(v[idx])
        return Split(tensors)

    train, val, test = (make(i) for i in split_indices(y, seed, val_fraction, test_fraction, stratify))
    fractions = {names[0]: None, names[1]: val_fraction, names[2]: test_fraction}
    check_split_sizes({names[0]: train, names[1]: val, names[2]: test}, fractions, len(y), stratify)
    if stratify:
        check_classes(train, names[0])
    return train, val, test


def check_split_sizes(
    splits: dict[str, Split], fractions: dict[str, Optional[float]], total: int, stratified: bool
) -> None:
    """KdlabError naming each split's size when one that should hold samples is empty
    (fraction None: the remainder, which must not be empty either; fraction 0: empty by design)."""
    empty = [k for k, s in splits.items() if len(s) == 0 and fractions.get(k) != 0]
    if not empty:
        return
    sizes = ", ".join(f"{k} {len(s)}" for k, s in splits.items() if fractions.get(k) != 0)
    per = " of some class (the split is stratified per class)" if stratified else ""
    needs = [f"{k}_fraction={fractions[k]:g} needs at least {math.ceil(1 / fractions[k])} samples{per}"
             for k in empty if fractions.get(k)]
    fix = "; ".join(needs) or "lower val_fraction and test_fraction"
    raise KdlabError(
        f"the data is too small for its splits: {total} samples gave {sizes}; every split needs at "
        f"least one sample ({fix}): give more samples or change the fractions"
    )


def check_classes(train: Split, name: str = "train") -> None:
    """KdlabError when a classification training split holds fewer than two classes."""
    classes = torch.unique(train["y"]) if len(train) else torch.zeros(0)
    if len(classes) < 2:
        raise KdlabError(
            f"the {name} split holds {len(classes)} class(es) ({', '.join(str(int(c)) for c in classes) or 'none'});"
            " a classifier needs labels of at least 2 classes"
        )
