"""The one place a model is built from its config section: kdlab's zoo (`name`), a user's
callable (`import`) or a Hugging Face model (`hf`), then its initial `weights` if given."""

from __future__ import annotations

from typing import Optional

from torch import nn

from kdlab.config.schema import ModelSpec
from kdlab.models.hf import build_hf
from kdlab.models.imported import build_imported
from kdlab.models.weights import load_weights
from kdlab.registry import MODELS


def build_model(spec: ModelSpec, data, role: str = "model") -> nn.Module:
    """`data` is the DataBundle the model will see: its class count, input shape, task and the
    dataset's model arguments (vocabulary size, user and item counts, ...)."""
    num_classes = spec.num_classes or data.num_classes
    offered = {"num_classes": num_classes, "input_shape": tuple(data.input_shape), **data.model_args}
    if spec.name is not None:
        model = MODELS.get(spec.name).obj(**offered, **spec.params)
    elif spec.import_ is not None:
        model = build_imported(spec.import_, spec.params, offered)
    else:
        model = build_hf(spec.hf, num_classes, getattr(data, "task", None), data.model_args.get("vocab_size"))
    if spec.weights:
        load_weights(model, spec.weights, role)
    return model


def arch_record(spec: Optional[ModelSpec], data, model: Optional[nn.Module] = None) -> dict:
    """What a checkpoint records of the architecture it holds (without a spec: a module given
    as it is, e.g. through the Python API)."""
    if spec is None:
        return {"model": type(model).__name__, "num_classes": data.num_classes, "input_shape": list(data.input_shape)}
    return {
        "model": spec.source,
        "source": spec.model_dump(mode="json", exclude={"weights"}),
        "params": spec.params,
        "num_classes": spec.num_classes or data.num_classes,
        "input_shape": list(data.input_shape),
    }


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
