"""Splits read sample by sample (data larger than memory), beside the in-memory `Split`.

A `SampleSource` reads sample i of a dataset as a dict of CPU tensors (an image decoded, a
row of a table tokenised). A `StreamSplit` is a source seen through an index: its sample j is
source sample index[j], so train/val/test are the same seeded index arrays as in memory.
`materialize` reads every sample once into an in-memory `Split` (the fast path when the data
fits). Per-sample augmentation (`SampleSource.augment`) is seeded by (seed, epoch, sample),
so it is the same whichever worker process reads the sample.
"""

from __future__ import annotations

import os
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from kdlab.data.base import Split
from kdlab.seeding import derive, generator

StreamMode = Union[bool, str]  # True, False or "auto"


class SampleSource:
    """Map-style samples: `len`, `read(i)` -> {key: tensor without a batch dim} (CPU)."""

    # Per-sample training augmentation, run in the worker: (sample, generator) -> sample.
    augment: Optional[Callable[[dict, torch.Generator], dict]] = None

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, i: int) -> dict[str, Tensor]:
        raise NotImplementedError

    def nbytes(self) -> int:
        """Estimated in-memory size of all samples (from the first one)."""
        if len(self) == 0:
            return 0
        return len(self) * sum(v.numel() * v.element_size() for v in self.read(0).values())


class TensorSource(SampleSource):
    """An in-memory split read sample by sample (streaming data that is already loaded)."""

    def __init__(self, split: Split):
        self.tensors = {k: v.cpu() for k, v in split.tensors.items()}
        self.n = len(split)
        y = self.tensors.get("y")
        self.labels = y.numpy() if y is not None and y.dim() == 1 and not y.is_floating_point() else None

    def __len__(self) -> int:
        return self.n

    def read(self, i: int) -> dict[str, Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}


def collate(samples: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


class StreamSplit:
    """Samples `index` of a source, read on demand. `workers` loader processes read them."""

    def __init__(self, source: SampleSource, index: Optional[np.ndarray] = None, workers: int = 0):
        self.source = source
        self.index = np.arange(len(source)) if index is None else np.asarray(index, dtype=np.int64)
        self.workers = workers

    def __len__(self) -> int:
        return len(self.index)

    def sample(self, j: int, seed_key: Optional[tuple] = None) -> dict[str, Tensor]:
        """Sample j of the split; with `seed_key` = (seed, epoch), augmented per sample."""
        s = self.source.read(int(self.index[j]))
        if seed_key is not None and self.source.augment is not None:
            s = self.source.augment(s, generator(derive(*seed_key, 4, j)))
        return s

    def head(self, n: int) -> dict[str, Tensor]:
        return collate([self.sample(j) for j in range(min(n, len(self)))])

    def rows(self, index: Tensor) -> dict[str, Tensor]:
        """Samples `index` read one by one in this process, as a batch on `index`'s device (for
        methods that draw extra training samples, e.g. cs_kd's same-class partners)."""
        batch = collate([self.sample(j) for j in index.tolist()])
        return {k: v.to(index.device) for k, v in batch.items()}

    def chunks(self, size: int):
        """Every sample in order, read `size` at a time (for a pass over the whole split in
        bounded memory, e.g. a teacher's class-mean predictions)."""
        for a in range(0, len(self), size):
            yield collate([self.sample(j) for j in range(a, min(a + size, len(self)))])

    def subset(self, index) -> "StreamSplit":
        return StreamSplit(self.source, self.index[np.asarray(index)], self.workers)

    def to(self, device) -> "StreamSplit":
        return self  # samples stay where they are read from; batches go to the device

    def nbytes(self) -> int:
        total = len(self.source)
        return self.source.nbytes() * len(self) // total if total else 0

    @property
    def tensors(self):
        from kdlab.errors import KdlabError

        raise KdlabError("this step needs the whole split in memory, but the data is streamed: "
                         "set data.stream: false (or a larger data.memory_budget)")

    def __getitem__(self, key):
        return self.tensors[key]

    def labels(self) -> Optional[Tensor]:
        """The `y` of every sample when the source keeps labels in memory (for stratifying)."""
        y = getattr(self.source, "labels", None)
        return None if y is None else torch.as_tensor(y)[torch.from_numpy(self.index)].long()


def materialize(split: Union[Split, StreamSplit], chunk: int = 1024) -> Split:
    """Every sample of a streamed split read once into tensors (the in-memory split)."""
    if isinstance(split, Split):
        return split
    if len(split) == 0:
        first = split.source.read(0) if len(split.source) else {}
        return Split({k: v.new_empty((0, *v.shape)) for k, v in first.items()})
    parts = [collate([split.sample(j) for j in range(a, min(a + chunk, len(split)))])
             for a in range(0, len(split), chunk)]
    return Split({k: torch.cat([p[k] for p in parts]) for k in parts[0]})


def memory_budget(device: Optional[torch.device] = None, gigabytes: Optional[float] = None) -> int:
    """Bytes the in-memory path may hold: `gigabytes`, else a quarter of the RAM (and of the
    GPU's memory on CUDA, where in-memory data lives on the device)."""
    if gigabytes is not None:
        return int(gigabytes * 2**30)
    budget = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        budget = min(budget, torch.cuda.get_device_properties(device).total_memory // 4)
    return budget


def decide(mode: StreamMode, nbytes: int, budget: int) -> bool:
    """Whether to stream: as configured, or for `auto` when the data exceeds the budget."""
    return bool(mode) if mode != "auto" else nbytes > budget
