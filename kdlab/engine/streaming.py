"""Batches of a streamed split, read by `torch.utils.data` worker processes.

The order, each rank's share of a global batch and the batch augmentation are TensorLoader's
(same seed, same batches): the workers only read (decode, tokenise, augment per sample) the
samples the seeded order names; batches are collated, pinned on CUDA, moved to the device
and prepared there, as in memory.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from kdlab.data.batching import finish_batch
from kdlab.data.stream import StreamSplit, collate
from kdlab.engine.loader import TensorLoader, epoch_order


class _Samples(Dataset):
    """Item (j, seed_key) is sample j of the split with its position as `index`."""

    def __init__(self, split: StreamSplit):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, item) -> dict[str, Tensor]:
        j, key = item
        sample = self.split.sample(j, key)
        sample["index"] = torch.tensor(j, dtype=torch.long)
        return sample


class _RankBatches(Sampler):
    """The loader's batches of the current epoch, read in the main process at each iteration."""

    def __init__(self, loader: "StreamLoader"):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        ld = self.loader
        key = (ld.seed, ld.epoch) if ld.augment_samples else None
        for idx in ld.rank_batches():
            yield [(int(j), key) for j in idx]


def _die_with_parent(worker_id: int) -> None:
    """A worker ends the moment its training process does (Linux): a forked worker shares the
    run's lock, and a killed run must read as interrupted, and resume, at once."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class StreamLoader(TensorLoader):
    def __init__(self, split: StreamSplit, batch_size: int, device=None, augment_samples: bool = False,
                 workers: int | None = None, prefetch: int = 4, **options):
        device = torch.device(device if device is not None else "cpu")
        super().__init__(split, batch_size, device=device, **options)
        # The source's per-sample augmentation (in the workers), for training batches only.
        self.augment_samples = augment_samples and split.source.augment is not None
        workers = split.workers if workers is None else workers
        self.pin = device.type == "cuda"
        self.data = DataLoader(
            _Samples(split), batch_sampler=_RankBatches(self), collate_fn=collate, num_workers=workers,
            pin_memory=self.pin, persistent_workers=False, prefetch_factor=prefetch if workers > 0 else None,
            # The loader draws its workers' base seed from this generator, not from the global
            # RNG that dropout draws from: streaming leaves the training's random draws alone.
            generator=torch.Generator().manual_seed(self.seed), worker_init_fn=_die_with_parent,
        )

    def order(self) -> Tensor:
        return epoch_order(len(self.split), self.shuffle, self.seed, self.epoch)  # stays on the CPU

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        aug_gen = self.augment_generator(self.device)
        for batch in self.data:
            batch = {k: v.to(self.device, non_blocking=self.pin) for k, v in batch.items()}
            yield finish_batch(batch, self.prepare, self.augment, aug_gen)
