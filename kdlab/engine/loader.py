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
        device=None,
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
        self.device = device if device is not None else next(iter(split.tensors.values())).device

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self) -> Tensor:
        return epoch_order(len(self.split), self.shuffle, self.seed, self.epoch).to(self.device)

    def rank_batches(self) -> Iterator[Tensor]:
        """This rank's share of each global batch of the epoch, as sample positions."""
        order = self.order()
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield idx[self.rank :: self.world] if self.world > 1 else idx

    def augment_generator(self, device) -> Optional[torch.Generator]:
        if self.augment is None:
            return None
        return generator(derive(self.seed, self.epoch, 2, self.rank), device)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        if self.views is not None:
            for idx in self.rank_batches():
                yield {**cut_batch(self.split, idx), **self.views(idx, self.epoch, self.seed)}
            return
        aug_gen = self.augment_generator(self.device)
        for idx in self.rank_batches():
            yield cut_batch(self.split, idx, self.prepare, self.augment, aug_gen)


def epoch_order(n: int, shuffle: bool, seed: int, epoch: int) -> Tensor:
    """The epoch's sample order: a permutation seeded by (seed, epoch), drawn on the CPU so it
    is the same on every device and for every loader."""
    if not shuffle:
        return torch.arange(n)
    return torch.randperm(n, generator=generator(derive(seed, epoch, 1)))


def make_loader(split, batch_size: int, device=None, augment_samples: bool = False, **options):
    """The loader of a split: batches cut from device tensors, or read by worker processes
    when the split is streamed (`StreamSplit`, augmented per sample when `augment_samples`);
    both yield the same batches for the same seed."""
    from kdlab.data.stream import StreamSplit

    if isinstance(split, StreamSplit):
        from kdlab.engine.streaming import StreamLoader

        return StreamLoader(split, batch_size, device=device, augment_samples=augment_samples, **options)
    return TensorLoader(split, batch_size, **options)
