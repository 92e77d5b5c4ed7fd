"""Batched augmentations and input preparation for whole batches of tensors.

Every op takes a batch `x` shaped (N, C, H, W) (any dtype, uint8 included) and a
`torch.Generator`, and draws one random number per sample on the generator's device, so the
result is deterministic given the generator's state. No per-sample Python loops: the batch
is padded once and crops are gathered with per-sample offsets. The ops are plain functions;
bind their options with `functools.partial`.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# Standard per-channel statistics of the training sets (RGB, on [0, 1] pixels).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_images(x: Tensor, op: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{op} expects a batch shaped (N, C, H, W), got {tuple(x.shape)}")


def _randint(high: int, n: int, generator: torch.Generator, device) -> Tensor:
    """n integers in [0, high), drawn on the generator's device and moved to `device`."""
    return torch.randint(0, high, (n,), generator=generator, device=generator.device).to(device)


def random_crop(x: Tensor, generator: torch.Generator, padding: int = 4, fill: float = 0) -> Tensor:
    """Pad the batch by `padding` on every side with `fill`, then crop each sample back to
    (H, W) at its own random offset; padding=1 is a random shift by up to one pixel."""
    _check_images(x, "random_crop")
    if padding <= 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding), value=fill)
    oy = _randint(2 * padding + 1, n, generator, x.device)
    ox = _randint(2 * padding + 1, n, generator, x.device)
    rows = oy[:, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = ox[:, None] + torch.arange(w, device=x.device)  # (N, W)
    wp = padded.shape[-1]
    out = padded.gather(2, rows[:, None, :, None].expand(n, c, h, wp))
    return out.gather(3, cols[:, None, None, :].expand(n, c, h, w))


def random_hflip(x: Tensor, generator: torch.Generator, p: float = 0.5) -> Tensor:
    """Mirror each sample left-right with probability p."""
    _check_images(x, "random_hflip")
    draw = torch.rand(x.shape[0], generator=generator, device=generator.device).to(x.device)
    return torch.where((draw < p).view(-1, 1, 1, 1), x.flip(-1), x)


def crop_flip(x: Tensor, generator: torch.Generator, padding: int = 4) -> Tensor:
    """The standard CIFAR training augmentation: random crop with zero padding, then a
    horizontal flip with probability 1/2."""
    return random_hflip(random_crop(x, generator, padding=padding), generator)


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 pixels (or float pixels already on [0, 1]) -> float32 standardised per channel
    (channel dim 1)."""
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    shape = (1, -1) + (1,) * (x.dim() - 2)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(shape)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(shape)
    return (x - m) / s


def to_unit_float(x: Tensor) -> Tensor:
    """uint8 -> float32 on [0, 1]; other dtypes -> float32 unchanged in value."""
    return x.float() / 255 if x.dtype == torch.uint8 else x.float()


STATS_CHUNK = 4096


def channel_stats(x, chunk: int = STATS_CHUNK) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of a uint8 image tensor (N, C, H, W), on [0, 1] pixels; `x`
    may also be an iterable of consecutive chunks of STATS_CHUNK images (a streamed split)."""
    parts = (x[start : start + chunk] for start in range(0, len(x), chunk)) if isinstance(x, Tensor) else x
    total = total_sq = None
    count = 0
    for part in parts:
        part = to_unit_float(part).double()
        s, sq = part.sum(dim=(0, 2, 3)), (part * part).sum(dim=(0, 2, 3))
        total, total_sq = (s, sq) if total is None else (total + s, total_sq + sq)
        count += part.shape[0] * part.shape[2] * part.shape[3]
    if total is None:
        total = total_sq = torch.zeros(x.shape[1] if isinstance(x, Tensor) else 3, dtype=torch.float64)
    count = max(1, count)
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0).sqrt().clamp_min(1e-3)
    return tuple(mean.tolist()), tuple(std.tolist())
