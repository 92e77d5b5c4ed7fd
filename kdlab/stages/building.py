"""Build data and methods from validated specs (models: `kdlab.models.build`)."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from kdlab.config.schema import DataSpec, MethodSpec, ModelSpec
from kdlab.data.base import DataBundle, Split
from kdlab.methods.base import Method, MethodContext
from kdlab.models.build import build_model
from kdlab.registry import DATASETS, METHODS


def load_data(spec: DataSpec) -> DataBundle:
    """The split is seeded by `data.split_seed`, not the training seed, so every seed of an
    experiment (and its teacher) sees the same train/val/test split."""
    params = dict(spec.params)
    data = DATASETS.get(spec.name).obj(seed=spec.split_seed, **params)
    if spec.train_fraction < 1:
        data = dataclasses.replace(data, train=subsample(data.train, spec.train_fraction, spec.split_seed))
    return data


def subsample(split: Split, fraction: float, seed: int) -> Split:
    """A stratified (by `y` when it holds class labels) seeded fraction of a split."""
    g = torch.Generator().manual_seed(seed + 7919)
    y = split.tensors.get("y")
    if y is not None and y.dim() == 1 and not y.is_floating_point():
        keep = []
        for c in torch.unique(y):
            idx = torch.nonzero(y == c).flatten()
            idx = idx[torch.randperm(len(idx), generator=g)]
            keep.append(idx[: max(1, round(len(idx) * fraction))])
        index = torch.cat(keep).sort().values
    else:
        n = len(split)
        index = torch.randperm(n, generator=g)[: max(1, round(n * fraction))].sort().values
    return split.subset(index)


def build_methods(specs: list[MethodSpec], ctx: MethodContext) -> tuple[list[Method], list[float]]:
    methods, weights = [], []
    for spec in specs:
        cls = METHODS.get(spec.name).obj
        methods.append(cls(spec.build_params(), ctx))
        weights.append(spec.weight)
    return methods, weights


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


def reads_layers(spec: MethodSpec) -> bool:
    """Whether a method reads intermediate layers (and so can name a wrong one)."""
    from kdlab.methods.feature_layers import LayerParams

    return issubclass(METHODS.get(spec.name).obj.Params, LayerParams)


def preflight(exp, data: DataBundle, task, device: torch.device) -> None:
    """Build every variant's methods against untrained student and teacher models, so a wrong
    layer path or hyper-parameter fails before any teacher or student trains."""
    if not any(reads_layers(m) for ms in exp.method_sets().values() for m in ms):
        return
    student = build_model(exp.student, data)
    teachers = [build_model(t.model, data) for t in exp.all_teachers()]
    for specs in exp.method_sets().values():
        build_methods(specs, method_context(data, student, teachers, exp.train.epochs, device, task))
