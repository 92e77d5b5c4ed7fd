"""Optimisers and learning-rate schedules. The schedule is a pure function of the (fractional)
epoch, so there is no scheduler state to save and resume is exact."""

from __future__ import annotations

import math

import torch

from kdlab.config.schema import OptimizerSpec, ScheduleSpec


def build_optimizer(params, spec: OptimizerSpec) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if spec.name == "sgd":
        return torch.optim.SGD(
            params, lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov and spec.momentum > 0,
            weight_decay=spec.weight_decay,
        )
    if spec.name == "adam":
        return torch.optim.Adam(params, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay)
    return torch.optim.AdamW(params, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay)


def lr_factor(spec: ScheduleSpec, t: float, total_epochs: int) -> float:
    """Multiplier of the base lr at fractional epoch t (0 <= t < total_epochs)."""
    if spec.warmup_epochs > 0 and t < spec.warmup_epochs:
        return (t + 1e-8) / spec.warmup_epochs if t > 0 else 1.0 / max(1.0, spec.warmup_epochs * 100)
    epoch = int(t)
    if spec.name == "constant":
        return 1.0
    if spec.name == "step":
        return spec.gamma ** (epoch // spec.step_size)
    if spec.name == "multistep":
        return spec.gamma ** sum(epoch >= m for m in spec.milestones)
    # cosine from the end of warm-up to the last epoch
    span = max(total_epochs - spec.warmup_epochs, 1e-8)
    progress = min(max((t - spec.warmup_epochs) / span, 0.0), 1.0)
    lo = spec.min_lr_ratio
    return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = base_lr * factor
