"""Batches cut from in-memory tensors that already live on the training device.

Shuffling uses a generator seeded from (seed, epoch); under DDP every rank draws the same
permutation and keeps its own share of each global batch, so the global batch (and the
averaged gradient) is the same as in a single-process run.

`views(index, epoch, seed)`, when given, replaces augmentation: it returns the batch's `x`
(and `view`) from augmented views drawn once and stored (a teacher-output cache's).
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch
from torch import Tensor

from kdlab.data.base import Split
from kdlab.data.batching import cut_batch
from kdlab.seeding import derive, generator


class TensorLoader:
    def __init__(
        self,
        split: Split,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        prepare=None,
        augment=None,
        rank: int = 0,
        world: int = 1,
        drop_last: bool = False,
        views=None,
    ):
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.prepare = prepare
        self.augment = augment
        self.rank, self.world = rank, world
        self.drop_last = drop_last
        self.views = views
        self.epoch = 0
        self.device = next(iter(split.tensors.values())).device

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self) -> Tensor:
        n = len(self.split)
        if not self.shuffle:
            return torch.arange(n, device=self.device)
        g = generator(derive(self.seed, self.epoch, 1))  # CPU generator: same on every device
        return torch.randperm(n, generator=g).to(self.device)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        order = self.order()
        aug_gen: Optional[torch.Generator] = None
        if self.augment is not None and self.views is None:
            aug_gen = generator(derive(self.seed, self.epoch, 2, self.rank), self.device)
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            if self.world > 1:
                idx = idx[self.rank :: self.world]
            if self.views is not None:
                yield {**cut_batch(self.split, idx), **self.views(idx, self.epoch, self.seed)}
            else:
                yield cut_batch(self.split, idx, self.prepare, self.augment, aug_gen)
