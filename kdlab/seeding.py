"""Deterministic seeding. Randomness is re-derived from (seed, epoch) at every epoch start, so
a run resumed at an epoch boundary draws exactly what an uninterrupted run would."""

from __future__ import annotations

import random

import numpy as np
import torch


def derive(seed: int, *salt: int) -> int:
    h = seed & 0xFFFFFFFF
    for s in salt:
        h = (h * 1_000_003 + s + 0x9E3779B9) & 0x7FFFFFFF
    return h


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    torch.manual_seed(seed)


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g
