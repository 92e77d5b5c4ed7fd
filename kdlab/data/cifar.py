"""CIFAR-10 and CIFAR-100 from a local copy of the python-pickle release (never downloaded).

Expected layout (`path` may name the folder itself or its parent):
    cifar-10-batches-py/{data_batch_1..data_batch_5, test_batch, batches.meta}
    cifar-100-python/{train, test, meta}

Images are held as uint8 (N, 3, 32, 32); `prepare` scales them to [0, 1] and standardises
with the usual per-channel mean/std, `augment` is random crop 32 (padding 4) + horizontal
flip. With the default val_fraction=0 the val split IS the test split, as in the usual CIFAR
KD tables (which report the best or last test accuracy); give val_fraction > 0 to carve a
stratified val split out of the 50,000 training images instead.

The pickles are read with an unpickler that only accepts numpy arrays and plain Python
containers, so a malicious file cannot run code.
"""

from __future__ import annotations

import pickle
from functools import partial
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from kdlab.data._common import split_train_val
from kdlab.data.augment import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    crop_flip,
    normalize,
)
from kdlab.data.base import DataBundle, Split
from kdlab.errors import KdlabError
from kdlab.registry import DATASETS

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
CIFAR100_DIR = "cifar-100-python"
CIFAR100_FILES = ["train", "test", "meta"]


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays and builtin containers, and nothing else."""

    _ALLOWED = {
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if module.startswith("numpy.core"):  # pickles written by numpy < 2 (or Python 2)
            module = "numpy._core" + module[len("numpy.core") :]
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def _load_pickle(file: Path, kind: str) -> dict:
    try:
        with open(file, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as e:  # corrupt, truncated or foreign files
        raise KdlabError(
            f"cannot read {kind} file '{file}' ({type(e).__name__}: {e}); re-extract the"
            " python version of the dataset"
        ) from None
    if not isinstance(obj, dict):
        raise KdlabError(f"{kind} file '{file}' does not hold a dict; is it the python version?")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _find_root(path: str, folder: str, files: list[str], kind: str) -> Path:
    layout = f"{folder}/{{{', '.join(files)}}}"
    p = Path(path).expanduser()
    if not p.is_dir():
        raise KdlabError(
            f"data path '{path}' does not exist; give data.params.path=… pointing to the"
            f" {kind} python-pickle folder {layout} (or its parent)"
        )
    for cand in (p, p / folder):
        if all((cand / f).is_file() for f in files):
            return cand
    base = p / folder if (p / folder).is_dir() else p
    missing = [f for f in files if not (base / f).is_file()]
    raise KdlabError(
        f"'{path}' is not a {kind} folder: missing {', '.join(missing)}; expected the python"
        f" version laid out as {layout} (give the folder or its parent)"
    )


def _get(d: dict, key: str, file: Path, kind: str):
    if key not in d:
        raise KdlabError(
            f"{kind} file '{file}' has no '{key}' entry (it has {', '.join(map(str, d))});"
            " is it the python version?"
        )
    return d[key]


def _images(d: dict, file: Path, kind: str) -> np.ndarray:
    data = np.asarray(_get(d, "data", file, kind))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise KdlabError(
            f"{kind} file '{file}': 'data' is {data.dtype} {data.shape}, expected uint8"
            " (N, 3072) rows of 32x32 RGB images"
        )
    return data.reshape(-1, 3, 32, 32)


def _labels(d: dict, key: str, n: int, num_classes: int, file: Path, kind: str) -> np.ndarray:
    y = np.asarray(_get(d, key, file, kind))
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise KdlabError(
            f"{kind} file '{file}': '{key}' must hold {n} integer labels, got {y.dtype} {y.shape}"
        )
    if n and (y.min() < 0 or y.max() >= num_classes):
        raise KdlabError(f"{kind} file '{file}': '{key}' has labels outside 0..{num_classes - 1}")
    return y.astype(np.int64)


def _names(meta: dict, key: str, count: int, file: Path, kind: str) -> list[str]:
    names = _get(meta, key, file, kind)
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    if len(names) != count:
        raise KdlabError(f"{kind} file '{file}': '{key}' lists {len(names)} names, expected {count}")
    return names


def _bundle(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    seed: int,
    val_fraction: float,
    augment: bool,
    mean: tuple,
    std: tuple,
    class_names: list[str],
    superclass: Optional[list[int]] = None,
    meta: dict,
) -> DataBundle:
    train, val = split_train_val(x_train, y_train, seed, val_fraction)
    test = Split({"x": torch.from_numpy(x_test), "y": torch.from_numpy(y_test)})
    if val is None:
        val, meta["val_is_test"] = test, True
    return DataBundle(
        train=train,
        val=val,
        test=test,
        num_classes=len(class_names),
        input_shape=(3, 32, 32),
        class_names=class_names,
        superclass=superclass,
        prepare=partial(normalize, mean=mean, std=std),
        augment=partial(crop_flip, padding=4) if augment else None,
        meta=meta,
    )


@DATASETS.register(
    "cifar10",
    "CIFAR-10 from a local python-pickle copy: 50k/10k 32x32 RGB images, 10 classes",
    "Krizhevsky 2009, 'Learning Multiple Layers of Features from Tiny Images'",
)
def build_cifar10(
    path: str,
    seed: int = 0,
    val_fraction: float = 0.0,
    augment: bool = True,
) -> DataBundle:
    """val_fraction=0 (default): val is the test split; otherwise a stratified part of train."""
    kind = "CIFAR-10"
    root = _find_root(path, CIFAR10_DIR, CIFAR10_FILES, kind)
    xs, ys = [], []
    for name in CIFAR10_FILES[:5]:
        d = _load_pickle(root / name, kind)
        xs.append(_images(d, root / name, kind))
        ys.append(_labels(d, "labels", len(xs[-1]), 10, root / name, kind))
    test = _load_pickle(root / "test_batch", kind)
    x_test = _images(test, root / "test_batch", kind)
    y_test = _labels(test, "labels", len(x_test), 10, root / "test_batch", kind)
    meta_file = root / "batches.meta"
    names = _names(_load_pickle(meta_file, kind), "label_names", 10, meta_file, kind)
    return _bundle(
        np.concatenate(xs), np.concatenate(ys), x_test, y_test,
        seed=seed, val_fraction=val_fraction, augment=augment,
        mean=CIFAR10_MEAN, std=CIFAR10_STD, class_names=names,
        meta={"path": str(root)},
    )  # fmt: skip


@DATASETS.register(
    "cifar100",
    "CIFAR-100 from a local python-pickle copy: 50k/10k 32x32 RGB, 100 classes in 20 superclasses",
    "Krizhevsky 2009, 'Learning Multiple Layers of Features from Tiny Images'",
)
def build_cifar100(
    path: str,
    seed: int = 0,
    val_fraction: float = 0.0,
    augment: bool = True,
) -> DataBundle:
    """val_fraction=0 (default): val is the test split; otherwise a stratified part of train.
    bundle.superclass maps each fine class to its coarse class (from the files' labels)."""
    kind = "CIFAR-100"
    root = _find_root(path, CIFAR100_DIR, CIFAR100_FILES, kind)
    parts = {}
    for name in ("train", "test"):
        d = _load_pickle(root / name, kind)
        x = _images(d, root / name, kind)
        fine = _labels(d, "fine_labels", len(x), 100, root / name, kind)
        coarse = _labels(d, "coarse_labels", len(x), 20, root / name, kind)
        parts[name] = (x, fine, coarse)
    meta_file = root / "meta"
    meta = _load_pickle(meta_file, kind)
    names = _names(meta, "fine_label_names", 100, meta_file, kind)
    coarse_names = (
        _names(meta, "coarse_label_names", 20, meta_file, kind)
        if "coarse_label_names" in meta
        else None
    )
    superclass = [-1] * 100  # -1 only for classes absent from both files
    for name in ("train", "test"):
        _, fine, coarse = parts[name]
        for f, c in set(zip(fine.tolist(), coarse.tolist())):
            if superclass[f] not in (-1, c):
                raise KdlabError(
                    f"CIFAR-100 file '{root / name}': fine class {f} appears under coarse classes"
                    f" {superclass[f]} and {c}; the files are inconsistent"
                )
            superclass[f] = c
    (x_train, y_train, _), (x_test, y_test, _) = parts["train"], parts["test"]
    return _bundle(
        x_train, y_train, x_test, y_test,
        seed=seed, val_fraction=val_fraction, augment=augment,
        mean=CIFAR100_MEAN, std=CIFAR100_STD, class_names=names, superclass=superclass,
        meta={"path": str(root), "superclass_names": coarse_names},
    )  # fmt: skip
