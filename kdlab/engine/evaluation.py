"""Evaluation in eval mode on held-out data, summed over batches and DDP ranks."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from kdlab.engine import distributed as D
from kdlab.engine.loader import make_loader


def evaluate(model: nn.Module, split, task, prepare=None, batch_size: int = 1024, autocast=None) -> dict[str, float]:
    if len(split) == 0:
        return {}
    env = D.current()
    was_training = model.training
    model.eval()
    sums: dict[str, Tensor] = {}
    device = next(model.parameters(), torch.empty(0)).device  # where a streamed split's batches go
    loader = make_loader(split, batch_size, device=device, prepare=prepare, rank=env.rank, world=env.world)
    with torch.inference_mode(), (autocast or contextlib.nullcontext()):
        for batch in loader:
            for k, v in task.eval_batch(model, batch).items():
                sums[k] = sums[k] + v if k in sums else v
    model.train(was_training)
    return task.finalize(D.all_reduce_sums(sums))
