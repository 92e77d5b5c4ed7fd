"""A frozen model held in lower precision (`teacher.dtype: bf16`): its weights are cast, and
a forward pre-hook casts the floating inputs it is called with (images, embeddings) to its
dtype, so every caller (training steps, evaluation, generation) can hand it float32 tensors.
Token ids stay integers. Its outputs are upcast to float32 where the engine reads them
(`kdlab.engine.module.teacher_outputs`)."""

from __future__ import annotations

import torch
from torch import nn

DTYPES = {"float32": torch.float32, "bf16": torch.bfloat16}


def _cast(value, dtype: torch.dtype):
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    if isinstance(value, dict):
        return {k: _cast(v, dtype) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(v, dtype) for v in value)
    return value


def hold_in(model: nn.Module, dtype: str) -> nn.Module:
    """The model cast to `dtype` (float32: unchanged) with its floating inputs cast on entry."""
    if dtype == "float32":
        return model
    target = DTYPES[dtype]
    model = model.to(target)
    model.register_forward_pre_hook(lambda m, args, kwargs: (_cast(args, target), _cast(kwargs, target)),
                                    with_kwargs=True)
    return model
