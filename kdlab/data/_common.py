"""Helpers shared by the dataset modules (not a dataset: the leading underscore keeps the
registry's module scan from treating it as one)."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from kdlab.data.base import Split, check_classes, check_split_sizes, split_arrays, split_indices
from kdlab.errors import KdlabError


def check_fractions(val_fraction: float, test_fraction: Optional[float] = None) -> None:
    """KdlabError unless 0 <= val < 1, 0 < test < 1 and val + test < 1 (test may be absent)."""
    if not 0 <= val_fraction < 1:
        raise KdlabError(
            f"data.params.val_fraction={val_fraction} is out of range; give a value in [0, 1)"
        )
    if test_fraction is None:
        return
    if not 0 < test_fraction < 1:
        raise KdlabError(
            f"data.params.test_fraction={test_fraction} is out of range; give a value in (0, 1)"
        )
    if val_fraction + test_fraction >= 1:
        raise KdlabError(
            f"val_fraction + test_fraction = {val_fraction + test_fraction:g} leaves no training "
            "data; make their sum below 1"
        )


def check_text_args(source: str, seq_len: int, near_duplicate: float, val_fraction: float, test_fraction: float) -> None:
    """The arguments shared by the built-in text sets split with near-duplicate grouping."""
    check_fractions(val_fraction, test_fraction)
    if seq_len < 1:
        raise KdlabError(f"{source}: seq_len must be >= 1, got {seq_len}")
    if not 0 < near_duplicate <= 1:
        raise KdlabError(f"{source}: near_duplicate is a Jaccard threshold in (0, 1], got {near_duplicate}")


def split_train_val(
    x: np.ndarray, y: np.ndarray, seed: int, val_fraction: float
) -> tuple[Split, Optional[Split]]:
    """Seeded, stratified train/val split; val is None when val_fraction is 0."""
    check_fractions(val_fraction)
    if val_fraction == 0:
        train = _as_split(x, y, seed)
        check_classes(train)
        return train, None
    train, _, val = split_arrays(x, y, seed, val_fraction=0.0, test_fraction=val_fraction,
                                 names=("train", "unused", "val"))
    return train, val


def train_val_indices(y: np.ndarray, seed: int, val_fraction: float) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """The sample indices of `split_train_val`'s two splits (with its checks)."""
    check_fractions(val_fraction)
    if val_fraction == 0:
        idx = np.random.default_rng(seed).permutation(len(y))
        check_classes(Split({"y": torch.as_tensor(y[idx])}))
        return idx, None
    train, _, val = split_indices(y, seed, 0.0, val_fraction)
    sizes = {"train": Split({"y": torch.as_tensor(y[train])}), "val": Split({"y": torch.as_tensor(y[val])})}
    check_split_sizes(sizes, {"train": None, "val": val_fraction}, len(y), True)
    check_classes(sizes["train"])
    return train, val


def _as_split(x: np.ndarray, y: np.ndarray, seed: int) -> Split:
    """All of x, y as one split, shuffled with the seed (as split_arrays shuffles its splits)."""
    idx = np.random.default_rng(seed).permutation(len(y))
    return Split({"x": torch.as_tensor(x[idx]), "y": torch.as_tensor(y[idx]).long()})
