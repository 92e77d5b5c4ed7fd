"""`digits_coarse`: sklearn's 8×8 digits as a few-class task that keeps the digit labels.

Digits are grouped into `groups` classes of consecutive digits (2: 0–4 vs 5–9, the analogue
of the MNIST 2×5 subclass-distillation demo). `y` is the coarse class; the split tensors
also hold `fine` (the digit), for analysing what learned subclasses capture. The split is
stratified by digit so every digit is present in every split.
"""

from __future__ import annotations

import numpy as np
import torch

from kdlab.data.base import DataBundle, Split, split_arrays
from kdlab.errors import KdlabError
from kdlab.registry import DATASETS


@DATASETS.register(
    "digits_coarse",
    "sklearn 8x8 digits grouped into `groups` classes of consecutive digits (2: 0-4 vs 5-9); "
    "the digit is kept as `fine` (1,797 images, no download)",
    "Alpaydin & Kaynak 1998, UCI optical recognition of handwritten digits",
)
def digits_coarse(seed: int = 0, groups: int = 2, val_fraction: float = 0.1, test_fraction: float = 0.2) -> DataBundle:
    if groups not in (1, 2, 5, 10):
        raise KdlabError(f"digits_coarse: groups must divide the 10 digits evenly (1, 2, 5 or 10), got {groups}")
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8) in [0, 1]
    fine = d.target.astype(np.int64)
    try:
        tr, va, te = split_arrays(x, fine, seed, val_fraction, test_fraction, extra={"fine": fine})
    except ValueError as e:
        raise KdlabError(f"digits_coarse: {e}") from None
    per = 10 // groups

    def coarse(s: Split) -> Split:
        t = dict(s.tensors)
        t["y"] = torch.div(t["fine"].long(), per, rounding_mode="floor")
        t["fine"] = t["fine"].long()
        return Split(t)

    names = [f"{g * per}-{g * per + per - 1}" if per > 1 else str(g) for g in range(groups)]
    return DataBundle(
        train=coarse(tr), val=coarse(va), test=coarse(te), num_classes=groups, input_shape=(1, 8, 8),
        class_names=names, meta={"fine_names": [str(i) for i in range(10)], "fine_per_class": per},
    )
