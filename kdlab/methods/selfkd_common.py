"""Helpers shared by self-distillation methods that add samples to a batch (cs_kd, dlb)."""

from __future__ import annotations

import torch
from torch import Tensor

from kdlab.data.batching import cut_batch
from kdlab.seeding import generator


def epoch_generators(device) -> tuple[torch.Generator, torch.Generator]:
    """A CPU generator for drawing indices and one on the data's device for augmentation.

    Seeded from the global RNG, which the engine re-seeds from (seed, epoch) at every epoch
    start, so draws are reproducible and a resumed run repeats them."""
    s = int(torch.randint(0, 2**31 - 1, (1,)).item())
    return generator(s), generator(s + 1, device)


def draw_train(data, index: Tensor, aug_gen: torch.Generator | None) -> dict[str, Tensor]:
    """Training samples `index` as the loader would give them: prepared and augmented."""
    return cut_batch(data.train, index, data.prepare, data.augment, aug_gen)


def concat_batches(a: dict[str, Tensor], b: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: torch.cat([a[k], b[k]]) for k in a if k in b}
