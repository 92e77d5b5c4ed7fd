"""Images from a local folder with one sub-folder per class, loaded into memory or streamed.

    path/<class name>/<image>.{png,jpg,jpeg,bmp,webp}

Every image is converted to RGB and resized (bilinear) to image_size x image_size, and the
whole set is held as a uint8 (N, 3, S, S) tensor. `prepare` standardises per channel with
the mean/std of the training split (or the ImageNet values), `augment` is random crop with
padding S/8 + horizontal flip, as for CIFAR. Class indices follow the sorted folder names.
Streamed (`data.stream`), each image is decoded when a loader worker reads it; the splits, the
normalisation statistics and the batches are the same as in memory.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch

from kdlab.data._common import check_fractions, split_train_val
from kdlab.data._common import train_val_indices
from kdlab.data.augment import IMAGENET_MEAN, IMAGENET_STD, STATS_CHUNK, channel_stats, crop_flip, normalize
from kdlab.data.base import DataBundle, Split, check_classes, check_split_sizes, split_arrays, split_indices
from kdlab.data.stream import SampleSource, StreamSplit
from kdlab.errors import KdlabError
from kdlab.registry import DATASETS

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def list_classes(path: str, what: str = "path") -> dict[str, list[Path]]:
    """{class name: sorted image files} for the class sub-folders of `path`."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise KdlabError(
            f"data path '{path}' does not exist; give data.params.{what}=… pointing to a folder"
            " with one sub-folder of images per class"
        )
    folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not folders:
        raise KdlabError(
            f"'{path}' has no class folders; put each class's images in its own sub-folder"
            " (path/<class>/<image>.png)"
        )
    classes = {}
    for folder in folders:
        files = sorted(
            f
            for f in folder.iterdir()
            if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            raise KdlabError(
                f"class folder '{folder}' has no images ({', '.join(IMAGE_EXTENSIONS)});"
                " add some or remove the folder"
            )
        classes[folder.name] = files
    return classes


def load_image(file: Path, size: int) -> np.ndarray:
    """One image as uint8 (3, size, size), or a KdlabError naming the file."""
    from PIL import Image

    try:
        with Image.open(file) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except Exception as e:  # PIL raises many kinds for damaged or foreign files
        raise KdlabError(
            f"cannot read image '{file}' ({type(e).__name__}: {e}); fix or remove the file"
        ) from None
    return arr.transpose(2, 0, 1)


class FolderSource(SampleSource):
    """Image files decoded one by one (in the loader's workers when streamed)."""

    def __init__(self, files: list[Path], labels: np.ndarray, size: int):
        self.files, self.labels, self.size = files, labels, size

    def __len__(self) -> int:
        return len(self.files)

    def read(self, i: int) -> dict[str, torch.Tensor]:
        x = np.ascontiguousarray(load_image(self.files[i], self.size))  # a writable copy of PIL's pixels
        return {"x": torch.from_numpy(x), "y": torch.tensor(int(self.labels[i]))}

    def nbytes(self) -> int:
        return len(self.files) * (3 * self.size * self.size + 8)


def folder_source(classes: dict[str, list[Path]], class_index: dict[str, int], size: int) -> FolderSource:
    files = [(f, class_index[name]) for name, fs in classes.items() for f in fs]
    return FolderSource([f for f, _ in files], np.array([c for _, c in files], dtype=np.int64), size)


def streamed_splits(path: str, test_path: Optional[str], classes, index, seed: int, size: int,
                    val_fraction: float, test_fraction: float) -> tuple[StreamSplit, StreamSplit, StreamSplit, dict]:
    """The in-memory path's splits as index arrays over the (undecoded) files."""
    source = folder_source(classes, index, size)
    meta: dict = {}
    if test_path is None:
        parts = split_indices(source.labels, seed, val_fraction, test_fraction)
        splits = [StreamSplit(source, i) for i in parts]
        check_split_sizes(dict(zip(("train", "val", "test"), splits)),
                          {"train": None, "val": val_fraction, "test": test_fraction}, len(source), True)
        check_classes(Split({"y": torch.as_tensor(source.labels[parts[0]])}))
        return (*splits, meta)
    train_idx, val_idx = train_val_indices(source.labels, seed, val_fraction)
    test = StreamSplit(folder_source(test_classes_of(path, test_path, index), index, size))
    val = test if val_idx is None else StreamSplit(source, val_idx)
    if val_idx is None:
        meta["val_is_test"] = True
    return StreamSplit(source, train_idx), val, test, meta


def test_classes_of(path: str, test_path: str, index: dict[str, int]) -> dict[str, list[Path]]:
    test_classes = list_classes(test_path, what="test_path")
    unknown = sorted(set(test_classes) - set(index))
    if unknown:
        raise KdlabError(
            f"test_path '{test_path}' has class folders not in '{path}': {', '.join(unknown)};"
            " the test classes must be among the training classes"
        )
    return test_classes


def image_chunks(split: StreamSplit):
    """A streamed split's images in consecutive chunks of STATS_CHUNK (for channel_stats)."""
    for a in range(0, len(split), STATS_CHUNK):
        yield torch.stack([split.sample(j)["x"] for j in range(a, min(a + STATS_CHUNK, len(split)))])


def load_folder(
    classes: dict[str, list[Path]], class_index: dict[str, int], size: int
) -> tuple[np.ndarray, np.ndarray]:
    files = [(f, class_index[name]) for name, fs in classes.items() for f in fs]
    x = np.empty((len(files), 3, size, size), dtype=np.uint8)
    for i, (f, _) in enumerate(files):  # file decoding is per image by nature
        x[i] = load_image(f, size)
    y = np.array([c for _, c in files], dtype=np.int64)
    return x, y


@DATASETS.register(
    "imagefolder",
    "images in class sub-folders of a local folder, resized to image_size x image_size RGB",
    "folder-per-class layout (as torchvision ImageFolder)",
)
def build_imagefolder(
    path: str,
    seed: int = 0,
    image_size: int = 32,
    test_path: Optional[str] = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    augment: bool = True,
    normalization: Literal["train", "imagenet"] = "train",
    stream=None,
) -> DataBundle:
    """Without test_path: seeded, stratified train/val/test split of `path`. With it: its
    images are the test split and val is carved from `path` (val_fraction=0: val is the test
    split). normalization="train" uses the training split's per-channel mean/std."""
    if image_size < 1:
        raise KdlabError(f"data.params.image_size={image_size} must be at least 1")
    check_fractions(val_fraction, test_fraction)
    classes = list_classes(path)
    class_names = sorted(classes)
    index = {name: i for i, name in enumerate(class_names)}
    n_files = sum(len(fs) for fs in classes.values())
    if stream is not None and stream(n_files * (3 * image_size * image_size + 8)):
        train, val, test, meta = streamed_splits(path, test_path, classes, index, seed, image_size,
                                                 val_fraction, test_fraction)
        meta.update(path=str(path), streamed=True)
        if test_path is not None:
            meta["test_path"] = str(test_path)
        stats = image_chunks(train)
    else:
        train, val, test, meta = loaded_splits(path, test_path, classes, index, seed, image_size,
                                               val_fraction, test_fraction)
        stats = train["x"]
    if normalization == "train":
        mean, std = channel_stats(stats)
    else:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    meta.update(mean=mean, std=std)
    return DataBundle(
        train=train,
        val=val,
        test=test,
        num_classes=len(class_names),
        input_shape=(3, image_size, image_size),
        class_names=class_names,
        prepare=partial(normalize, mean=mean, std=std),
        augment=partial(crop_flip, padding=max(1, image_size // 8)) if augment else None,
        meta=meta,
    )


def loaded_splits(path, test_path, classes, index, seed, image_size, val_fraction, test_fraction):
    """Every image decoded up front into in-memory splits."""
    x, y = load_folder(classes, index, image_size)
    meta: dict = {"path": str(path)}
    if test_path is None:
        train, val, test = split_arrays(x, y, seed, val_fraction, test_fraction)
    else:
        test_classes = test_classes_of(path, test_path, index)
        x_test, y_test = load_folder(test_classes, index, image_size)
        train, val = split_train_val(x, y, seed, val_fraction)
        test = Split({"x": torch.from_numpy(x_test), "y": torch.from_numpy(y_test)})
        if val is None:
            val, meta["val_is_test"] = test, True
        meta["test_path"] = str(test_path)
    return train, val, test, meta
