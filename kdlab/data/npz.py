"""Arrays from a local .npz file: `x`, `y`, and optionally `x_test`, `y_test`."""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from kdlab.data._common import check_fractions, split_train_val
from kdlab.data.augment import to_unit_float
from kdlab.data.base import DataBundle, Split, split_arrays
from kdlab.errors import KdlabError
from kdlab.registry import DATASETS


def _load_npz(path: str) -> dict[str, np.ndarray]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise KdlabError(
            f"data path '{path}' does not exist; give data.params.path=… pointing to an .npz"
            " with arrays x and y"
        )
    unreadable = "cannot read '{}' as an .npz archive ({}); save it with numpy.savez"
    try:
        data = np.load(p, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise KdlabError(unreadable.format(path, e)) from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise KdlabError(
            f"'{path}' holds a single array, not an .npz archive; save it with"
            " numpy.savez(path, x=..., y=...)"
        )
    try:
        return {k: data[k] for k in data.files}
    except ValueError as e:  # object arrays need pickle, which is refused
        raise KdlabError(
            f"'{path}' holds object (pickled) arrays ({e}); save plain numeric arrays x and y"
            " with numpy.savez"
        ) from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise KdlabError(unreadable.format(path, e)) from None
    finally:
        data.close()


def _labels(y: np.ndarray, name: str, path: str) -> np.ndarray:
    """int64 labels, or a KdlabError for labels that are not non-negative integers."""
    if y.ndim != 1:
        raise KdlabError(f"array '{name}' in '{path}' has shape {y.shape}; labels must be 1-D (N,)")
    if y.dtype == bool or np.issubdtype(y.dtype, np.integer):
        out = y.astype(np.int64)
    elif np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y) & (y == np.round(y))):
        out = y.astype(np.int64)
    else:
        raise KdlabError(
            f"array '{name}' in '{path}' has non-integer labels (dtype {y.dtype}); store class"
            " indices 0..K-1 as integers"
        )
    if len(out) and out.min() < 0:
        raise KdlabError(
            f"array '{name}' in '{path}' has negative labels; use class indices 0..K-1"
        )
    return out


def _inputs(x: np.ndarray, name: str, path: str, tokens: bool = False) -> np.ndarray:
    if x.ndim < 2:
        raise KdlabError(
            f"array '{name}' in '{path}' has shape {x.shape}; inputs must be (N, features...)"
        )
    if tokens:  # token ids for a text model (e.g. a Hugging Face classifier's input_ids)
        if not np.issubdtype(x.dtype, np.integer) or (x.size and x.min() < 0):
            raise KdlabError(f"array '{name}' in '{path}' (tokens: true) must hold non-negative integer token ids"
                             f" (got dtype {x.dtype}); drop tokens: true for numeric features")
        return x.astype(np.int64)
    if x.dtype == np.uint8:
        return x  # kept as uint8 in memory, scaled to [0, 1] by `prepare`
    numeric = np.issubdtype(x.dtype, np.number) and not np.issubdtype(x.dtype, np.complexfloating)
    if x.dtype == bool or numeric:
        return x.astype(np.float32)
    raise KdlabError(f"array '{name}' in '{path}' has dtype {x.dtype}; inputs must be numeric")


def class_count(labels: list[np.ndarray], path: str, declared: Optional[int]) -> int:
    """C for labels 0..C-1: `declared`, or max + 1 when that is not much more than the classes
    present (a stray 1e9 would otherwise make a billion-way classifier)."""
    top = max(int(y.max()) for y in labels if len(y))
    if declared is not None:
        if declared < 2:
            raise KdlabError(f"data.params.num_classes={declared}: a classifier needs at least 2 classes")
        if top >= declared:
            raise KdlabError(
                f"'{path}' has label {top} but num_classes={declared}: labels must be 0..{declared - 1}"
            )
        return declared
    present = len(np.unique(np.concatenate(labels)))
    if top + 1 > 2 * present:
        raise KdlabError(
            f"'{path}' has {present} distinct labels but the largest is {top}: labels must be 0..C-1;"
            f" relabel them 0..{present - 1}, or declare data.params.num_classes if classes are absent"
        )
    return top + 1


def scale_features(train: Split, val: Split, test: Split, standardize: bool, path: str, meta: dict):
    """Standardise every split with the training split's per-feature mean and std (a constant
    feature is only centred), or, when switched off, warn when features span thousands."""
    x = train["x"]
    if not standardize:
        span = float(x.abs().max()) if len(x) else 0.0
        if span >= 1000:
            warnings.warn(
                f"'{path}': features reach {span:.3g} and are not standardised (standardize: false);"
                " training may diverge: scale them or drop standardize: false",
                stacklevel=2,
            )
        return train, val, test
    mean = x.mean(dim=0, dtype=torch.float64)
    std = x.std(dim=0, unbiased=False).double() if len(x) > 1 else torch.ones_like(mean)
    std = torch.where(std > 0, std, torch.ones_like(std))
    meta.update(feature_mean=mean.float(), feature_std=std.float())

    def apply(split: Split) -> Split:
        scaled = ((split["x"].double() - mean) / std).float()
        return Split({**split.tensors, "x": scaled})

    scaled_test = apply(test)
    return apply(train), scaled_test if val is test else apply(val), scaled_test


@DATASETS.register(
    "npz",
    "arrays x, y (and optional x_test, y_test) from a local .npz file",
    "numpy.savez format",
)
def build_npz(
    path: str,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    standardize: bool = True,
    num_classes: Optional[int] = None,
    tokens: bool = False,
) -> DataBundle:
    """Without x_test/y_test: seeded, stratified train/val/test split of x, y. With them: they
    are the test split and val is carved from x, y (val_fraction=0: val is the test split).
    uint8 inputs stay uint8 in memory and are scaled to [0, 1] per batch; others are float32,
    standardised per feature with the training split's mean and std (standardize=False: as
    stored). Labels are 0..C-1, C = max label + 1 unless num_classes declares it. tokens=True:
    x holds integer token ids (N, T), kept as int64 and never standardised."""
    check_fractions(val_fraction, test_fraction)
    arrays = _load_npz(path)
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise KdlabError(
            f"'{path}' has no array {' or '.join(repr(k) for k in missing)} (it has:"
            f" {', '.join(sorted(arrays)) or 'nothing'}); save it with"
            " numpy.savez(path, x=..., y=...)"
        )
    x, y = _inputs(arrays["x"], "x", path, tokens), _labels(arrays["y"], "y", path)
    if len(x) != len(y):
        raise KdlabError(f"'{path}': x has {len(x)} rows but y has {len(y)}; they must match")
    if len(y) == 0:
        raise KdlabError(f"'{path}': x and y are empty")
    has_test = "x_test" in arrays or "y_test" in arrays
    meta = {"path": str(path)}
    if has_test:
        if "x_test" not in arrays or "y_test" not in arrays:
            raise KdlabError(f"'{path}' has only one of x_test, y_test; give both or neither")
        x_test = _inputs(arrays["x_test"], "x_test", path, tokens)
        y_test = _labels(arrays["y_test"], "y_test", path)
        if len(x_test) != len(y_test):
            raise KdlabError(
                f"'{path}': x_test has {len(x_test)} rows but y_test has {len(y_test)};"
                " they must match"
            )
        if x_test.shape[1:] != x.shape[1:]:
            raise KdlabError(
                f"'{path}': x_test rows are {x_test.shape[1:]} but x rows are {x.shape[1:]};"
                " they must match"
            )
        x_test = x_test.astype(x.dtype)
        train, val = split_train_val(x, y, seed, val_fraction)
        test = Split({"x": torch.as_tensor(x_test), "y": torch.as_tensor(y_test)})
        if val is None:
            val, meta["val_is_test"] = test, True
        if len(y_test) == 0:
            raise KdlabError(f"'{path}': x_test and y_test are empty; give test samples or leave both out")
        classes = class_count([y, y_test], path, num_classes)
    else:
        classes = class_count([y], path, num_classes)
        train, val, test = split_arrays(x, y, seed, val_fraction, test_fraction)
    if x.dtype != np.uint8 and not tokens:
        train, val, test = scale_features(train, val, test, standardize, path, meta)
    return DataBundle(
        train=train,
        val=val,
        test=test,
        num_classes=classes,
        input_shape=tuple(int(s) for s in x.shape[1:]),
        prepare=to_unit_float if x.dtype == np.uint8 else None,
        meta=meta,
    )
