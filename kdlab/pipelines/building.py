"""Build data, models and methods from validated specs."""

from __future__ import annotations

import torch
from torch import nn

from kdlab.config.schema import DataSpec, MethodSpec, ModelSpec
from kdlab.data.base import DataBundle
from kdlab.methods.base import Method, MethodContext
from kdlab.registry import DATASETS, METHODS, MODELS


def load_data(spec: DataSpec) -> DataBundle:
    """The split is seeded by `data.split_seed`, not the training seed, so every seed of an
    experiment (and its teacher) sees the same train/val/test split."""
    params = dict(spec.params)
    return DATASETS.get(spec.name).obj(seed=spec.split_seed, **params)


def build_model(spec: ModelSpec, data: DataBundle) -> nn.Module:
    num_classes = spec.num_classes or data.num_classes
    return MODELS.get(spec.name).obj(
        num_classes=num_classes, input_shape=tuple(data.input_shape), **data.model_args, **spec.params
    )


def build_methods(specs: list[MethodSpec], ctx: MethodContext) -> tuple[list[Method], list[float]]:
    methods, weights = [], []
    for spec in specs:
        cls = METHODS.get(spec.name).obj
        methods.append(cls(spec.build_params(), ctx))
        weights.append(spec.weight)
    return methods, weights


def arch_record(spec: ModelSpec, data: DataBundle) -> dict:
    return {
        "model": spec.name,
        "params": spec.params,
        "num_classes": spec.num_classes or data.num_classes,
        "input_shape": list(data.input_shape),
    }


def method_context(data: DataBundle, student, teachers, epochs: int, device: torch.device, task) -> MethodContext:
    return MethodContext(
        num_classes=data.num_classes,
        student=student,
        teachers=teachers,
        train_size=len(data.train),
        epochs=epochs,
        device=device,
        data=data,
        task=task,
    )
