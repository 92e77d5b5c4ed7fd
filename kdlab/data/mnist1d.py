"""MNIST-1D, generated in memory by the `mnist1d` package (nothing downloaded or cached)."""

from __future__ import annotations

import contextlib
import io
import random
from types import SimpleNamespace

import numpy as np

from kdlab.data._common import check_fractions
from kdlab.data.base import DataBundle, split_arrays
from kdlab.errors import KdlabError
from kdlab.registry import DATASETS


def generate_mnist1d(num_samples: int, data_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """All samples of MNIST-1D from the package's default generator arguments, with
    `num_samples` and the generator seed replaced. Leaves the global `random` and
    `numpy.random` states (which the package reseeds) as they were, and prints nothing."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args(as_dict=True)
    args.update(num_samples=num_samples, seed=data_seed)
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            data = make_dataset(SimpleNamespace(**args))
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    x = np.concatenate([data["x"], data["x_test"]]).astype(np.float32)
    y = np.concatenate([data["y"], data["y_test"]]).astype(np.int64)
    return x, y


@DATASETS.register(
    "mnist1d",
    "MNIST-1D: 10 classes of 1-D signals, x (1, 40), generated in memory",
    "Greydanus & Kobak 2024, 'Scaling down deep learning with MNIST-1D', arXiv:2011.14439",
)
def build_mnist1d(
    seed: int = 0,
    num_samples: int = 5000,
    data_seed: int = 42,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
) -> DataBundle:
    """`data_seed` fixes the generated samples; `seed` the stratified train/val/test split
    (the package's own 80/20 split is pooled and re-split)."""
    if num_samples < 10:
        raise KdlabError(
            f"data.params.num_samples={num_samples} is too small; MNIST-1D needs at least 10"
            " (one per class), e.g. the default 5000"
        )
    check_fractions(val_fraction, test_fraction)
    x, y = generate_mnist1d(num_samples, data_seed)
    train, val, test = split_arrays(x[:, None, :], y, seed, val_fraction, test_fraction)
    return DataBundle(
        train=train,
        val=val,
        test=test,
        num_classes=10,
        input_shape=(1, x.shape[-1]),
        class_names=[str(i) for i in range(10)],
        meta={"source": "mnist1d.data.make_dataset", "data_seed": data_seed},
    )
