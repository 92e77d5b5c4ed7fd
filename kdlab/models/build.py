"""The one place a model is built from its config section."""

from __future__ import annotations

from torch import nn

from kdlab.config.schema import ModelSpec
from kdlab.registry import MODELS


def build_model(spec: ModelSpec, data) -> nn.Module:
    """`data` is the DataBundle the model will see: its class count, input shape and the
    dataset's model arguments (vocabulary size, user and item counts, ...)."""
    num_classes = spec.num_classes or data.num_classes
    return MODELS.get(spec.name).obj(
        num_classes=num_classes, input_shape=tuple(data.input_shape), **data.model_args, **spec.params
    )


def arch_record(spec: ModelSpec, data) -> dict:
    """What a checkpoint records of the architecture it holds."""
    return {
        "model": spec.name,
        "params": spec.params,
        "num_classes": spec.num_classes or data.num_classes,
        "input_shape": list(data.input_shape),
    }


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
