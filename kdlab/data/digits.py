"""scikit-learn's bundled 8x8 handwritten digits (no download)."""

from __future__ import annotations

from functools import partial

import numpy as np

from kdlab.data._common import check_fractions
from kdlab.data.augment import random_crop
from kdlab.data.base import DataBundle, split_arrays
from kdlab.registry import DATASETS


@DATASETS.register(
    "digits",
    "scikit-learn 8x8 handwritten digits: 1797 images, 10 classes, x (1, 8, 8) on [0, 1]",
    "Alpaydin & Kaynak 1998, UCI Optical Recognition of Handwritten Digits"
    " (sklearn.datasets.load_digits)",
)
def build_digits(
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    augment: bool = False,
) -> DataBundle:
    """Seeded, stratified train/val/test split of the 1797 digits. `augment` shifts training
    images by up to one pixel in each direction (zero fill)."""
    from sklearn.datasets import load_digits

    check_fractions(val_fraction, test_fraction)
    raw = load_digits()
    x = (raw.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = raw.target.astype(np.int64)
    train, val, test = split_arrays(x, y, seed, val_fraction, test_fraction)
    return DataBundle(
        train=train,
        val=val,
        test=test,
        num_classes=10,
        input_shape=(1, 8, 8),
        class_names=[str(i) for i in range(10)],
        augment=partial(random_crop, padding=1) if augment else None,
        meta={"source": "sklearn.datasets.load_digits"},
    )
