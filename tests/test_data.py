"""Datasets in kdlab/data: shapes, seeded stratified splits, file loaders and their errors,
and the batched augmentations."""

from __future__ import annotations

import pickle
import random
from functools import partial

import numpy as np
import pytest
import torch

from kdlab.data.augment import crop_flip, normalize, random_crop, random_hflip, to_unit_float
from kdlab.data.base import DataBundle
from kdlab.errors import KdlabError
from kdlab.registry import DATASETS


def build(name: str, **params) -> DataBundle:
    return DATASETS.get(name).obj(**params)


def all_labels(b: DataBundle) -> torch.Tensor:
    return torch.cat([b.train["y"], b.val["y"], b.test["y"]])


def same_split(a: DataBundle, b: DataBundle) -> bool:
    return all(
        torch.equal(getattr(a, s)[k], getattr(b, s)[k])
        for s in ("train", "val", "test")
        for k in ("x", "y")
    )


def assert_stratified(b: DataBundle, fractions: dict[str, float], tol: int = 1) -> None:
    """Each class is split in the given fractions, up to rounding."""
    labels = all_labels(b)
    total = torch.bincount(labels, minlength=b.num_classes)
    for split, frac in fractions.items():
        counts = torch.bincount(getattr(b, split)["y"], minlength=b.num_classes)
        expected = torch.round(total.double() * frac)
        assert (counts - expected).abs().max() <= tol, (split, counts, expected)


def assert_bundle(b: DataBundle, num_classes: int, input_shape: tuple, x_dtype=torch.float32):
    assert b.num_classes == num_classes and b.input_shape == input_shape
    for split in (b.train, b.val, b.test):
        assert split["x"].dtype == x_dtype and split["y"].dtype == torch.int64
        assert split["x"].device.type == "cpu"
        assert tuple(split["x"].shape[1:]) == input_shape
        assert len(split["x"]) == len(split["y"])
    assert int(all_labels(b).max()) < num_classes


# ---------------------------------------------------------------- built-in datasets


@pytest.fixture(scope="module")
def digits():
    return build("digits", seed=0)


def test_digits_shapes_and_range(digits):
    assert_bundle(digits, 10, (1, 8, 8))
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797
    x = torch.cat([digits.train["x"], digits.test["x"]])
    assert x.min() >= 0 and x.max() == 1.0
    assert digits.class_names == [str(i) for i in range(10)]
    assert digits.augment is None and digits.prepare is None


def test_digits_seeded_stratified(digits):
    assert same_split(digits, build("digits", seed=0))
    assert not torch.equal(digits.train["y"], build("digits", seed=1).train["y"])
    assert_stratified(digits, {"train": 0.7, "val": 0.1, "test": 0.2})
    b = build("digits", seed=0, val_fraction=0.2, test_fraction=0.3)
    assert_stratified(b, {"train": 0.5, "val": 0.2, "test": 0.3})


def test_digits_augment_shifts_by_one_pixel():
    b = build("digits", seed=0, augment=True)
    x = b.train["x"][:64]
    out = b.augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert not torch.equal(out, x)
    # every output is the input shifted by at most one pixel in each direction
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for i in range(len(x)):
        windows = [padded[i, :, dy : dy + 8, dx : dx + 8] for dy in range(3) for dx in range(3)]
        assert any(torch.equal(out[i], w) for w in windows)


def test_bad_fractions_are_user_errors():
    with pytest.raises(KdlabError, match="val_fraction"):
        build("digits", seed=0, val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(KdlabError, match="test_fraction"):
        build("hierarchy", seed=0, test_fraction=0.0)


def test_mnist1d(capsys):
    np_state = np.random.get_state()[1].copy()
    py_state = random.getstate()
    b = build("mnist1d", seed=0, num_samples=400)
    assert capsys.readouterr().out == ""
    assert np.array_equal(np.random.get_state()[1], np_state) and random.getstate() == py_state
    assert_bundle(b, 10, (1, 40))
    assert len(all_labels(b)) == 400
    assert torch.bincount(all_labels(b)).tolist() == [40] * 10
    assert_stratified(b, {"train": 0.7, "val": 0.1, "test": 0.2})
    assert same_split(b, build("mnist1d", seed=0, num_samples=400))
    other_split = build("mnist1d", seed=1, num_samples=400)
    assert not torch.equal(b.test["x"], other_split.test["x"])
    # the same generated pool, split differently
    pool = lambda d: torch.cat([d.train["x"], d.val["x"], d.test["x"]]).flatten(1).sum(1).sort()[0]
    assert torch.allclose(pool(b), pool(other_split))
    other_data = build("mnist1d", seed=0, num_samples=400, data_seed=7)
    assert not torch.allclose(pool(b), pool(other_data))
    with pytest.raises(KdlabError, match="num_samples"):
        build("mnist1d", seed=0, num_samples=5)


SMALL_HIERARCHY = dict(num_superclasses=3, classes_per_superclass=3, dim=16, samples_per_class=60)


def test_hierarchy_structure():
    b = build("hierarchy", seed=0, **SMALL_HIERARCHY)
    assert_bundle(b, 9, (16,))
    assert b.superclass == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert b.class_names[:4] == ["s0/c0", "s0/c1", "s0/c2", "s1/c3"]
    assert torch.bincount(all_labels(b)).tolist() == [60] * 9
    assert_stratified(b, {"train": 0.7, "val": 0.1, "test": 0.2})
    default = build("hierarchy", seed=0)
    assert default.num_classes == 20 and default.input_shape == (32,)
    assert default.superclass == [c // 4 for c in range(20)]


@pytest.mark.parametrize("nonlinear", [False, True])
def test_hierarchy_class_means_cluster_by_superclass(nonlinear):
    b = build("hierarchy", seed=0, nonlinear=nonlinear)
    x, y = torch.cat([b.train["x"], b.test["x"]]), torch.cat([b.train["y"], b.test["y"]])
    means = torch.stack([x[y == c].mean(0) for c in range(b.num_classes)])
    dist = torch.cdist(means, means)
    sup = torch.tensor(b.superclass)
    same = sup[:, None] == sup[None, :]
    off_diag = ~torch.eye(len(sup), dtype=torch.bool)
    within, across = dist[same & off_diag], dist[~same]
    assert within.mean() < 0.5 * across.mean()
    # each class's nearest other class is in its own superclass
    nearest = dist.masked_fill(~off_diag, float("inf")).argmin(1)
    assert (sup[nearest] == sup).float().mean() >= 0.9


def test_hierarchy_seeds():
    a = build("hierarchy", seed=0, **SMALL_HIERARCHY)
    assert same_split(a, build("hierarchy", seed=0, **SMALL_HIERARCHY))
    b = build("hierarchy", seed=1, **SMALL_HIERARCHY)
    assert not torch.equal(a.train["x"], b.train["x"])
    # same data (data_seed), different split
    key = lambda d: torch.cat([d.train["x"], d.val["x"], d.test["x"]]).sum(1).sort()[0]
    assert torch.allclose(key(a), key(b))
    c = build("hierarchy", seed=0, data_seed=1, **SMALL_HIERARCHY)
    assert not torch.allclose(key(a), key(c))
    with pytest.raises(KdlabError, match="sigma_class"):
        build("hierarchy", seed=0, sigma_super=1.0, sigma_class=2.0)


def test_hierarchy_is_learnable_but_not_trivial():
    """A linear read-out on the train split lands well above chance and below perfect."""
    b = build("hierarchy", seed=0)
    xtr, ytr = b.train["x"], b.train["y"]
    mu, sd = xtr.mean(0), xtr.std(0)
    feats = lambda x: torch.cat([(x - mu) / sd, torch.ones(len(x), 1)], 1)
    # ridge least squares to one-hot targets: fast and deterministic
    a = feats(xtr)
    w = torch.linalg.solve(a.T @ a + 1e-2 * torch.eye(a.shape[1]), a.T @ torch.eye(20)[ytr])
    pred = (feats(b.test["x"]) @ w).argmax(1)
    acc = (pred == b.test["y"]).float().mean().item()
    assert 0.3 < acc < 0.97
    wrong = pred != b.test["y"]
    sup = torch.tensor(b.superclass)
    assert (sup[pred[wrong]] == sup[b.test["y"][wrong]]).float().mean() > 0.8


# ---------------------------------------------------------------- npz


def test_npz_split_and_uint8(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (100, 2, 3), dtype=np.uint8)
    y = np.repeat(np.arange(4), 25)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    b = build("npz", seed=0, path=str(tmp_path / "d.npz"))
    assert_bundle(b, 4, (2, 3), x_dtype=torch.uint8)
    assert_stratified(b, {"train": 0.7, "val": 0.1, "test": 0.2})
    assert b.prepare is not None and b.prepare(b.train["x"]).max() <= 1.0
    assert same_split(b, build("npz", seed=0, path=str(tmp_path / "d.npz")))
    assert not torch.equal(b.train["y"], build("npz", seed=1, path=str(tmp_path / "d.npz")).train["y"])


def test_npz_with_test_arrays(tmp_path):
    x = np.random.default_rng(0).normal(size=(40, 5))
    y = np.repeat(np.arange(2), 20).astype(np.float64)  # integral floats are accepted
    np.savez(tmp_path / "d.npz", x=x, y=y, x_test=x[:7], y_test=np.full(7, 2))
    b = build("npz", seed=0, path=str(tmp_path / "d.npz"))
    assert_bundle(b, 3, (5,))
    assert len(b.test) == 7 and len(b.val) == 4 and len(b.train) == 36
    assert b.prepare is None
    b0 = build("npz", seed=0, path=str(tmp_path / "d.npz"), val_fraction=0.0)
    assert b0.val is b0.test and len(b0.train) == 40


@pytest.mark.parametrize(
    "arrays, message",
    [
        (dict(x=np.zeros((4, 2))), "no array 'y'"),
        (dict(x=np.zeros((4, 2)), y=np.zeros(3, int)), "4 rows but y has 3"),
        (dict(x=np.zeros((4, 2)), y=np.array([0, 1.5, 1, 0])), "non-integer labels"),
        (dict(x=np.zeros((4, 2)), y=np.array(["a", "b", "c", "d"])), "non-integer labels"),
        (dict(x=np.zeros((4, 2)), y=np.zeros(4, int), x_test=np.zeros((2, 2))), "x_test, y_test"),
        (dict(x=np.zeros((4, 2)), y=np.zeros(4, int), x_test=np.zeros((2, 3)), y_test=np.zeros(2, int)), "rows are"),
    ],
)
def test_npz_errors(tmp_path, arrays, message):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(KdlabError, match=message):
        build("npz", seed=0, path=str(tmp_path / "d.npz"))


def test_npz_missing_or_foreign_file(tmp_path):
    with pytest.raises(KdlabError) as err:
        build("npz", seed=0, path="foo.npz")
    assert str(err.value) == (
        "data path 'foo.npz' does not exist; give data.params.path=… pointing to an .npz"
        " with arrays x and y"
    )
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(KdlabError, match="cannot read"):
        build("npz", seed=0, path=str(tmp_path / "bad.npz"))
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(KdlabError, match="single array"):
        build("npz", seed=0, path=str(tmp_path / "one.npy"))


# ---------------------------------------------------------------- cifar


def _dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _images(rng, n):
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8)


def write_fake_cifar10(root, n_per_batch=4, n_test=10):
    rng = np.random.default_rng(0)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for i in range(1, 6):
        labels = [(j + i) % 10 for j in range(n_per_batch)]
        _dump(d / f"data_batch_{i}", {b"data": _images(rng, n_per_batch), b"labels": labels})
    _dump(d / "test_batch", {b"data": _images(rng, n_test), b"labels": [j % 10 for j in range(n_test)]})
    _dump(d / "batches.meta", {b"label_names": [f"name{j}".encode() for j in range(10)]})
    return d


def write_fake_cifar100(root, n_train=20, n_test=10):
    rng = np.random.default_rng(1)
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    for name, n, start in (("train", n_train, 0), ("test", n_test, 50)):
        fine = [(start + 5 * j) % 100 for j in range(n)]
        _dump(d / name, {b"data": _images(rng, n), b"fine_labels": fine, b"coarse_labels": [f // 5 for f in fine]})
    _dump(d / "meta", {b"fine_label_names": [f"f{j}".encode() for j in range(100)],
                       b"coarse_label_names": [f"c{j}".encode() for j in range(20)]})  # fmt: skip
    return d


def test_cifar10_fake_folder(tmp_path):
    d = write_fake_cifar10(tmp_path)
    b = build("cifar10", seed=0, path=str(tmp_path))  # the parent folder
    assert_bundle(b, 10, (3, 32, 32), x_dtype=torch.uint8)
    assert len(b.train) == 20 and len(b.test) == 10
    assert b.val is b.test and b.meta["val_is_test"]
    assert b.class_names == [f"name{j}" for j in range(10)]
    with open(d / "test_batch", "rb") as f:
        raw = pickle.load(f)
    assert torch.equal(b.test["x"].reshape(10, -1), torch.from_numpy(raw[b"data"]))
    # prepare: uint8 -> normalised float; augment keeps shape and dtype
    p = b.prepare(b.train["x"])
    assert p.dtype == torch.float32 and p.shape == (20, 3, 32, 32)
    assert abs(p.mean().item()) < 0.5
    out = b.augment(b.train["x"], torch.Generator().manual_seed(0))
    assert out.shape == b.train["x"].shape and out.dtype == torch.uint8
    # the folder itself works too, and val can be carved from train
    b2 = build("cifar10", seed=0, path=str(d), val_fraction=0.5)
    assert len(b2.train) == 10 and len(b2.val) == 10 and b2.val is not b2.test
    assert same_split(b2, build("cifar10", seed=0, path=str(d), val_fraction=0.5))
    assert not build("cifar10", seed=0, path=str(d), augment=False).augment


def test_cifar100_fake_folder(tmp_path):
    write_fake_cifar100(tmp_path)
    b = build("cifar100", seed=0, path=str(tmp_path / "cifar-100-python"))
    assert_bundle(b, 100, (3, 32, 32), x_dtype=torch.uint8)
    assert len(b.train) == 20 and len(b.test) == 10 and b.val is b.test
    assert b.class_names[:2] == ["f0", "f1"]
    seen = set(all_labels(b).tolist())
    for c in range(100):
        assert b.superclass[c] == (c // 5 if c in seen else -1)
    assert b.meta["superclass_names"][:2] == ["c0", "c1"]


def test_cifar_folder_errors(tmp_path):
    with pytest.raises(KdlabError, match="does not exist.*cifar-10-batches-py"):
        build("cifar10", seed=0, path=str(tmp_path / "nowhere"))
    d = write_fake_cifar10(tmp_path)
    (d / "data_batch_3").unlink()
    with pytest.raises(KdlabError, match="missing data_batch_3.*cifar-10-batches-py/"):
        build("cifar10", seed=0, path=str(tmp_path))
    with pytest.raises(KdlabError, match="cifar-100-python"):
        build("cifar100", seed=0, path=str(tmp_path))
    # wrong content in a file that is present
    d100 = write_fake_cifar100(tmp_path)
    _dump(d100 / "train", {b"data": np.zeros((2, 100), np.uint8), b"fine_labels": [0, 1], b"coarse_labels": [0, 0]})
    with pytest.raises(KdlabError, match="3072"):
        build("cifar100", seed=0, path=str(tmp_path))
    (d100 / "train").write_bytes(b"garbage")
    with pytest.raises(KdlabError, match="cannot read CIFAR-100 file"):
        build("cifar100", seed=0, path=str(tmp_path))


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar_refuses_code_in_pickles(tmp_path, capsys):
    d = write_fake_cifar10(tmp_path)
    _dump(d / "batches.meta", {b"label_names": _Evil()})
    with pytest.raises(KdlabError, match="refusing to load builtins.print"):
        build("cifar10", seed=0, path=str(d))
    assert "pwned" not in capsys.readouterr().out


# ---------------------------------------------------------------- imagefolder


def write_images(root, classes: dict[str, int], size=(10, 12)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, (name, count) in enumerate(classes.items()):
        (root / name).mkdir(parents=True)
        for i in range(count):
            arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            mode_img = Image.fromarray(arr)
            if i % 3 == 1:
                mode_img = mode_img.convert("L")  # grayscale is converted to RGB
            mode_img.save(root / name / f"{i}.{'png' if i % 2 else 'bmp'}")


def test_imagefolder(tmp_path):
    write_images(tmp_path / "train", {"cat": 10, "dog": 10, "ant": 10})
    b = build("imagefolder", seed=0, path=str(tmp_path / "train"), image_size=8)
    assert_bundle(b, 3, (3, 8, 8), x_dtype=torch.uint8)
    assert b.class_names == ["ant", "cat", "dog"]
    assert len(all_labels(b)) == 30
    assert_stratified(b, {"train": 0.7, "val": 0.1, "test": 0.2})
    assert same_split(b, build("imagefolder", seed=0, path=str(tmp_path / "train"), image_size=8))
    p = b.prepare(b.train["x"])
    assert p.dtype == torch.float32
    assert torch.allclose(p.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)  # train statistics
    out = b.augment(b.train["x"], torch.Generator().manual_seed(0))
    assert out.shape == b.train["x"].shape

    write_images(tmp_path / "test", {"cat": 2, "dog": 3})
    b2 = build("imagefolder", seed=0, path=str(tmp_path / "train"), test_path=str(tmp_path / "test"),
               image_size=8, val_fraction=0.0, normalization="imagenet")  # fmt: skip
    assert len(b2.train) == 30 and len(b2.test) == 5 and b2.val is b2.test
    assert sorted(b2.test["y"].tolist()) == [1, 1, 2, 2, 2]


def test_imagefolder_errors(tmp_path):
    with pytest.raises(KdlabError, match="does not exist"):
        build("imagefolder", seed=0, path=str(tmp_path / "nowhere"))
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"")
    with pytest.raises(KdlabError, match="no class folders"):
        build("imagefolder", seed=0, path=str(tmp_path / "flat"))
    write_images(tmp_path / "d", {"a": 2})
    (tmp_path / "d" / "empty").mkdir()
    (tmp_path / "d" / "empty" / "notes.txt").write_text("x")
    with pytest.raises(KdlabError, match="class folder .*empty' has no images"):
        build("imagefolder", seed=0, path=str(tmp_path / "d"))
    (tmp_path / "d" / "empty" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(KdlabError, match="cannot read image .*broken.png"):
        build("imagefolder", seed=0, path=str(tmp_path / "d"))


# ---------------------------------------------------------------- augment ops


def asymmetric_batch(n=16, c=3, h=6, w=6, dtype=torch.uint8):
    return (torch.arange(n * c * h * w) % 251).to(dtype).view(n, c, h, w)


def test_crop_flip_shape_and_determinism():
    x = asymmetric_batch()
    a = crop_flip(x, torch.Generator().manual_seed(3))
    b = crop_flip(x, torch.Generator().manual_seed(3))
    c = crop_flip(x, torch.Generator().manual_seed(4))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, x)
    xf = x.float()
    assert torch.equal(crop_flip(xf, torch.Generator().manual_seed(3)), a.float())


def test_random_crop_is_a_window_of_the_padded_batch():
    x = asymmetric_batch(n=32)
    out = random_crop(x, torch.Generator().manual_seed(0), padding=2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    offsets = set()
    for i in range(len(x)):
        hits = [(dy, dx) for dy in range(5) for dx in range(5)
                if torch.equal(out[i], padded[i, :, dy : dy + 6, dx : dx + 6])]  # fmt: skip
        assert hits
        offsets.add(hits[0])
    assert len(offsets) > 5  # offsets differ per sample
    assert torch.equal(random_crop(x, torch.Generator(), padding=0), x)


def test_random_hflip_flips_some_samples():
    x = asymmetric_batch(n=64)
    assert not torch.equal(x.flip(-1), x)
    assert torch.equal(random_hflip(x, torch.Generator().manual_seed(0), p=1.0), x.flip(-1))
    assert torch.equal(random_hflip(x, torch.Generator().manual_seed(0), p=0.0), x)
    out = random_hflip(x, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(out[i], x[i].flip(-1)) for i in range(64)])
    kept = torch.tensor([torch.equal(out[i], x[i]) for i in range(64)])
    assert (flipped | kept).all() and 10 < flipped.sum() < 54


def test_normalize_and_unit_float():
    x = torch.full((2, 3, 2, 2), 255, dtype=torch.uint8)
    out = normalize(x, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    assert out.dtype == torch.float32
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([2.0, 1.0, 0.5]))
    assert x.dtype == torch.uint8 and int(x.max()) == 255  # input untouched
    assert torch.equal(to_unit_float(x), torch.ones(2, 3, 2, 2))
    f = partial(normalize, mean=(0.0,), std=(2.0,))
    assert torch.allclose(f(torch.ones(1, 1, 3)), torch.full((1, 1, 3), 0.5))
