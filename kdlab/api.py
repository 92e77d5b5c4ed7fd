"""kdlab from Python (notebooks, scripts): `distill(teacher, student, train, ...)`.

The call runs the same stage as `kdlab run` does (`kdlab.stages.stage.run_stage`: the one
training engine, its checks, the run store when `store` is given, the progress bars), on data
given as tensors, a torch `Dataset` or a `DataLoader`, and returns the trained student with its
metrics:

    import kdlab.api
    result = kdlab.api.distill(teacher, student, train=(x, y), val=(xv, yv), methods=["ce", "kd"], epochs=5)
    result.student, result.summary["test_top1"], result.history[-1]["train_kd"]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence, Union

import torch
from pydantic import ValidationError
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from kdlab.config.load import format_validation_error
from kdlab.config.schema import CacheSpec, DataSpec, MethodSpec, OptimizerSpec, ScheduleSpec, TrainSpec, needs_teacher
from kdlab.data.base import DataBundle, Split
from kdlab.errors import KdlabError
from kdlab.report.progress import Reporter
from kdlab.stages.building import check_logits
from kdlab.stages.context import RunContext, resolve_device
from kdlab.stages.stage import Stage, run_stage
from kdlab.store.runstore import RunStore
from kdlab.tasks.base import get_task

Data = Union[tuple, list, Dataset, DataLoader]
MethodLike = Union[str, dict, MethodSpec]


@dataclass
class Distilled:
    """The trained student (its weights as of the last epoch) and what the run measured."""

    student: nn.Module
    history: list[dict]  # one record per epoch: train_<term>, val_<metric>, lr, time
    summary: dict[str, Any]  # test_<metric>, best_test_<metric>, best_epoch, params, ...
    run_id: Optional[str] = None  # with `store`: the run in the store (`kdlab runs show RUN_ID`)
    run_path: Optional[str] = None


def distill(
    teacher: Optional[nn.Module],
    student: nn.Module,
    train: Data,
    val: Optional[Data] = None,
    test: Optional[Data] = None,
    *,
    methods: Union[MethodLike, Sequence[MethodLike]] = ("ce", "kd"),
    epochs: int = 10,
    lr: float = 1e-3,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    schedule: str = "cosine",
    batch_size: int = 64,
    eval_batch_size: int = 1024,
    seed: int = 0,
    num_classes: Optional[int] = None,
    task: str = "classification",
    device: str = "auto",
    store: Optional[str] = None,
    progress: bool = True,
    name: str = "api",
    teacher_cache: Union[bool, dict, None] = None,
) -> Distilled:
    """Train `student` with `methods` (names, or dicts such as `{"name": "kd", "weight": 0.9,
    "tau": 4}`) from `teacher` (an nn.Module used as it is, in eval mode with gradients off;
    None when no method reads one). Models may return logits, a Hugging Face ModelOutput, a
    tuple (logits first) or a dict with 'logits'.

    Data: `(x, y)` tensors (or arrays), a `Dataset` of `(x, y)` pairs (or dicts with x, y) or a
    `DataLoader` of such batches. A Dataset or DataLoader is read once, whole, into tensors in
    memory (kdlab's loader then cuts seeded batches from them): it must fit in memory, and a
    DataLoader's own shuffling and batch size do not matter. `val` (the split that picks the
    best epoch) defaults to `test`, else to `train`; `test` defaults to `val`.

    `task`: "classification" (y: class indices, classes 0..num_classes-1 with num_classes
    from the labels unless given), "lm" (x, y: token ids (N, T), the vocabulary
    num_classes from the largest id unless given) or "token_classification" (x: token ids
    (N, T), y: a tag per token (N, T) with -100 where nothing is scored, as Hugging Face's
    collators give them). For the token tasks a batch may carry an `attention_mask`: a third
    tensor `(x, y, mask)`, or a dict item/batch with `x`/`y`/`attention_mask` or Hugging
    Face's `input_ids`/`labels`/`attention_mask`; batches of different lengths are padded
    (x with 0, y with -100, mask with 0). `store`: a run-store folder to record the
    run in (its epochs, checkpoints and model.safetensors), None for none. `teacher_cache`:
    True or a dict of `teacher.cache` settings (dtype, topk, path): the teacher's outputs on
    `train` are computed once and kept (in `store`, or at `path`), then read every epoch and by
    every later call with the same teacher weights and data. Bad input raises
    `kdlab.errors.KdlabError` with a one-line message."""
    specs = _method_specs(methods)
    needing = sorted({m.name for m in specs if needs_teacher(m)})
    if needing and teacher is None:
        raise KdlabError(f"method(s) {', '.join(needing)} need a teacher: pass teacher=...")
    for role, m in (("student", student), ("teacher", teacher)):
        if m is not None and not isinstance(m, nn.Module):
            raise KdlabError(f"{role} must be a torch nn.Module, got {type(m).__name__}")
    splits = {"train": _tensors(train, "train")}
    splits["val"] = _tensors(val, "val") if val is not None else None
    splits["test"] = _tensors(test, "test") if test is not None else None
    splits["val"] = splits["val"] or splits["test"] or splits["train"]
    splits["test"] = splits["test"] or splits["val"]
    data = _bundle(splits, task, num_classes)
    try:
        train_spec = TrainSpec(epochs=epochs, optimizer=OptimizerSpec(name=optimizer, lr=lr, weight_decay=weight_decay),
                               schedule=ScheduleSpec(name=schedule))
        data_spec = DataSpec.model_construct(name="tensors", params={}, batch_size=batch_size,
                                             eval_batch_size=eval_batch_size, split_seed=0, train_fraction=1.0)
    except ValidationError as e:
        raise KdlabError(format_validation_error(e, "distill")) from None
    if batch_size < 1 or eval_batch_size < 1:
        raise KdlabError(f"batch sizes must be 1 or more (got batch_size={batch_size}, eval_batch_size={eval_batch_size})")
    dev = resolve_device(device)
    data = data.to(dev)
    the_task = get_task(data)
    teachers = [teacher] if teacher is not None and needing else []
    cache = _cache_spec(teacher_cache)
    if cache is not None and not teachers:
        raise KdlabError("teacher_cache is set but no method reads the teacher: remove teacher_cache")
    if cache is not None and store is None and cache.path is None:
        raise KdlabError("teacher_cache needs somewhere to keep the outputs: pass store=... or teacher_cache={'path': ...}")
    for role, m in (("student", student), *(("teacher", t) for t in teachers)):
        check_logits(m, data, the_task, data.num_classes, f"{role} ({type(m).__name__})")
    config = {
        "api": name, "student": type(student).__name__, "teacher": [type(t).__name__ for t in teachers],
        "methods": [m.model_dump(mode="json") for m in specs], "train": train_spec.model_dump(mode="json"),
        "data": {"task": task, "num_classes": data.num_classes, "input_shape": list(data.input_shape),
                 "sizes": [len(data.train), len(data.val), len(data.test)], "batch_size": batch_size},
        "seed": seed,
    }
    with Reporter(enabled=progress) as reporter:
        ctx = RunContext(RunStore(store) if store is not None else None, dev, reporter)
        stage = Stage(name=name, kind="student", model=None, module=student, methods=specs, seed=seed, data=data,
                      task=the_task, data_spec=data_spec, train=train_spec, config=config, teachers=teachers,
                      teacher_cache=[cache] if teachers else [])
        done = run_stage(ctx, stage)
    return Distilled(done.model, done.result.history, done.summary, done.run_id, done.run_path)


def _cache_spec(value: Union[bool, dict, None]) -> Optional[CacheSpec]:
    if value is None or value is False:
        return None
    if value is True:
        return CacheSpec()
    if not isinstance(value, dict):
        raise KdlabError(f"teacher_cache must be True or a dict of teacher.cache settings, got {type(value).__name__}")
    try:
        return CacheSpec(**value)
    except ValidationError as e:
        raise KdlabError(format_validation_error(e, "teacher_cache")) from None


def _method_specs(methods: Union[MethodLike, Sequence[MethodLike]]) -> list[MethodSpec]:
    items = [methods] if isinstance(methods, (str, dict, MethodSpec)) else list(methods)
    if not items:
        raise KdlabError("methods is empty: give at least one, e.g. ['ce', 'kd']")
    out = []
    for m in items:
        if isinstance(m, MethodSpec):
            out.append(m)
            continue
        try:
            out.append(MethodSpec(name=m) if isinstance(m, str) else MethodSpec(**m))
        except ValidationError as e:
            raise KdlabError(format_validation_error(e, "methods")) from None
        except TypeError:
            raise KdlabError(f"a method is a name or a dict with a name, got {m!r}") from None
    return out


def _tensors(obj: Data, role: str) -> dict[str, Tensor]:
    """{'x', 'y'[, 'attention_mask']} from tensors/arrays, a Dataset or a DataLoader (read whole)."""
    if isinstance(obj, DataLoader):
        return _stack(list(obj), role, _cat)
    if isinstance(obj, Dataset):
        return _stack([obj[i] for i in range(len(obj))], role, _stack_padded)
    if isinstance(obj, (tuple, list)) and len(obj) in (2, 3):
        parts = dict(zip(_KEYS, (torch.as_tensor(v) for v in obj)))
        if len({len(v) for v in parts.values()}) > 1:
            sizes = ", ".join(f"{k} has {len(v)} rows" for k, v in parts.items())
            raise KdlabError(f"{role}: {sizes}; they must match")
        return parts
    raise KdlabError(f"{role} must be (x, y) tensors, a torch Dataset or a DataLoader, got {type(obj).__name__}")


_KEYS = ("x", "y", "attention_mask")
_HF_KEYS = {"input_ids": "x", "labels": "y"}  # a Hugging Face collator's names
_PAD = {"x": 0, "y": -100, "attention_mask": 0}


def _item(item, role: str) -> dict[str, Tensor]:
    if isinstance(item, dict):
        item = {_HF_KEYS.get(k, k): v for k, v in item.items()}
        if "x" in item and "y" in item:
            return {k: torch.as_tensor(item[k]) for k in _KEYS if k in item}
    elif isinstance(item, (tuple, list)) and len(item) >= 2:
        return {k: torch.as_tensor(v) for k, v in zip(_KEYS, item)}
    raise KdlabError(f"{role}: each item must be an (x, y) pair or a dict with x and y (or input_ids and labels), "
                     f"got {type(item).__name__}")


def _pad(parts: list[Tensor], key: str, dim: int) -> list[Tensor]:
    """Token batches of different lengths, padded along `dim` to the longest."""
    if any(p.dim() <= dim for p in parts) or len({p.shape[dim] for p in parts}) == 1:
        return parts
    width = max(p.shape[dim] for p in parts)
    out = []
    for p in parts:
        shape = list(p.shape)
        shape[dim] = width - p.shape[dim]
        out.append(torch.cat([p, p.new_full(shape, _PAD[key])], dim))
    return out


def _cat(parts: list[Tensor], key: str) -> Tensor:
    return torch.cat(_pad(parts, key, 1))


def _stack_padded(parts: list[Tensor], key: str) -> Tensor:
    return torch.stack(_pad(parts, key, 0))


def _stack(items: Iterable, role: str, join) -> dict[str, Tensor]:
    rows = [_item(item, role) for item in items]
    if not rows:
        raise KdlabError(f"{role} is empty")
    keys = [k for k in _KEYS if all(k in r for r in rows)]
    return {k: join([r[k] for r in rows], k) for k in keys}


def _bundle(splits: dict[str, dict[str, Tensor]], task: str, num_classes: Optional[int]) -> DataBundle:
    if task not in ("classification", "lm", "token_classification"):
        raise KdlabError(f"task must be 'classification', 'lm' or 'token_classification' (got {task!r})")
    tokens = task != "classification"
    for role, s in splits.items():
        y = s["y"]
        if y.is_floating_point() or y.dim() != (2 if tokens else 1):
            shape = {"classification": "(N,) class indices", "lm": "(N, T) token ids",
                     "token_classification": "(N, T) tags per token"}[task]
            raise KdlabError(f"{role}: y must be {shape} as integers (got {y.dtype}, shape {tuple(y.shape)})")
        if tokens and s["x"].shape[:2] != y.shape:
            raise KdlabError(f"{role}: x {tuple(s['x'].shape)} and y {tuple(y.shape)} must have the same "
                             "(rows, tokens): one label per token")
        if "attention_mask" in s and s["attention_mask"].shape != y.shape:
            raise KdlabError(f"{role}: attention_mask {tuple(s['attention_mask'].shape)} must match y {tuple(y.shape)}")
        s["y"] = y.long()
        if "attention_mask" in s:
            s["attention_mask"] = s["attention_mask"].long()
    if len({tuple(sorted(s)) for s in splits.values()}) > 1:
        raise KdlabError("give attention_mask for every split or for none")
    labelled = {"classification": ("y",), "lm": ("x", "y"), "token_classification": ("y",)}[task]
    # -100 marks a token that is not scored (Hugging Face's convention), not a class
    parts = [p[p != -100] if task == "token_classification" else p
             for s in splits.values() for p in (s[k] for k in labelled)]
    parts = [p for p in parts if p.numel()]
    if not parts:
        raise KdlabError("no labelled token in the data: every label is -100")
    top = max(int(p.max()) for p in parts)
    classes = num_classes if num_classes is not None else top + 1
    if top >= classes or min(int(p.min()) for p in parts) < 0:
        what = " (or -100 for a token not scored)" if task == "token_classification" else ""
        raise KdlabError(f"labels must lie in 0..{classes - 1}{what} (num_classes={classes}); the data holds up to {top}")
    x = splits["train"]["x"]
    model_args = {"vocab_size": classes} if task == "lm" else {}
    return DataBundle(train=Split(splits["train"]), val=Split(splits["val"]), test=Split(splits["test"]),
                      num_classes=classes, input_shape=tuple(x.shape[1:]), task=task, model_args=model_args)
