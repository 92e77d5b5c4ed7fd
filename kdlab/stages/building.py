"""Build data and methods from validated specs (models: `kdlab.models.build`)."""

from __future__ import annotations

import dataclasses
import functools
import inspect

import torch
from torch import nn

from kdlab.config.schema import DataSpec, MethodSpec, ModelSpec
from kdlab.data.base import DataBundle, Split
from kdlab.data.stream import StreamSplit, TensorSource, decide, memory_budget
from kdlab.errors import KdlabError
from kdlab.methods.base import Method, MethodContext
from kdlab.models.build import build_model
from kdlab.registry import DATASETS, METHODS
from kdlab.stages.teacher_cache import check_caches
from kdlab.stages.vocabulary import check_vocabularies


def load_data(spec: DataSpec) -> DataBundle:
    """The split is seeded by `data.split_seed`, not the training seed, so every seed of an
    experiment (and its teacher) sees the same train/val/test split. A dataset that can read
    samples on demand is told whether to (`data.stream`, or its size against the memory
    budget); with `stream: true` any other dataset's splits are streamed from memory."""
    params = dict(spec.params)
    build = DATASETS.get(spec.name).obj
    if "stream" in inspect.signature(build).parameters:
        params["stream"] = functools.partial(decide, spec.stream, budget=memory_budget(gigabytes=spec.memory_budget))
    data = build(seed=spec.split_seed, **params)
    if spec.train_fraction < 1:
        data = dataclasses.replace(data, train=subsample(data.train, spec.train_fraction, spec.split_seed))
    return stream_splits(data, spec)


def stream_splits(data: DataBundle, spec: DataSpec) -> DataBundle:
    """Streamed splits get the loader's worker count; `stream: true` streams in-memory ones."""
    def one(split):
        if isinstance(split, Split) and spec.stream is True:
            return StreamSplit(TensorSource(split), workers=spec.workers)
        if isinstance(split, StreamSplit):
            split.workers = spec.workers
        return split

    splits = {name: one(getattr(data, name)) for name in ("train", "val", "test")}
    if data.val is data.test:  # one split in two roles stays one
        splits["val"] = splits["test"]
    return dataclasses.replace(data, **splits)


def subsample(split, fraction: float, seed: int):
    """A stratified (by `y` when it holds class labels) seeded fraction of a split."""
    g = torch.Generator().manual_seed(seed + 7919)
    y = split.labels() if isinstance(split, StreamSplit) else split.tensors.get("y")
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
    layer path or hyper-parameter fails before any teacher or student trains; models from
    `import` or `hf` are also run once, to refuse outputs that do not fit the data."""
    check_caches(exp, data, task)
    sources = [("student", exp.student)] + [(f"teacher {i}", t.model) for i, t in enumerate(exp.all_teachers())]
    outside = [(role, spec) for role, spec in sources if spec.name is None]
    if not outside and not any(reads_layers(m) for ms in exp.method_sets().values() for m in ms):
        return
    student = build_model(exp.student, data, "student")
    teachers = [build_model(t.model, data, f"teacher {i}") for i, t in enumerate(exp.all_teachers())]
    check_vocabularies(sources, [student, *teachers], data)
    for (role, spec), model in zip(sources, [student, *teachers]):
        if spec.name is None:
            check_logits(model, data, task, spec.num_classes or data.num_classes, f"{role} ({spec.source})")
    for specs in exp.method_sets().values():
        build_methods(specs, method_context(data, student, teachers, exp.train.epochs, device, task))


def check_logits(model: nn.Module, data: DataBundle, task, expected: int, role: str) -> None:
    """A model whose logits do not have one entry per class (per vocabulary token for language
    models) is refused before anything trains: e.g. a network built for another label set."""
    if task.name not in ("classification", "lm", "token_classification") or len(data.val) == 0:
        return
    batch = data.val.head(2)
    if data.prepare is not None:
        batch["x"] = data.prepare(batch["x"])
    model = model.to(batch["x"].device).eval()
    try:
        with torch.no_grad():
            logits = task.forward(model, batch)
    except (RuntimeError, TypeError, ValueError, IndexError) as e:
        text = str(e).strip().splitlines()
        raise KdlabError(f"{role} cannot run on the data's inputs (shape {tuple(batch['x'].shape[1:])}, "
                         f"{batch['x'].dtype}): {text[0][:200] if text else type(e).__name__}") from None
    width = logits.shape[-1] if logits.dim() else 0
    if width != expected:
        what = "vocabulary tokens" if task.name == "lm" else "classes"
        per = "sample" if task.name == "classification" else "token"
        raise KdlabError(f"{role} gives {width} logits per {per} but the data "
                         f"has {expected} {what}: make it output {expected} (an imported callable is given num_classes when it "
                         "names that parameter)")
