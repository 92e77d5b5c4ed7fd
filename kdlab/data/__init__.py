"""Datasets. Each module registers its datasets in `kdlab.registry.DATASETS`."""

from kdlab.data.base import DataBundle, Split, split_arrays

__all__ = ["DataBundle", "Split", "split_arrays"]
