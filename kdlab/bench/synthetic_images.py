"""Random images and labels for the speed benchmarks: only shapes matter there, so the data is
noise drawn from a fixed generator (the same tensors in every run)."""

from __future__ import annotations

import torch

from kdlab.data.base import DataBundle, Split


def random_images(train: int, held_out: int, image: int, num_classes: int) -> DataBundle:
    """`train` samples, and `held_out` each for validation and test (0: empty splits)."""
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> Split:
        return Split({"x": torch.randn(n, 3, image, image, generator=g),
                      "y": torch.randint(0, num_classes, (n,), generator=g)})

    return DataBundle(split(train), split(held_out), split(held_out), num_classes, (3, image, image))
