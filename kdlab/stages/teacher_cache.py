"""Teacher-output caches: a teacher's outputs (logits, and the layers the methods tap) on the
training data, computed once and reused by every stage that distils from that teacher.

A cache is keyed by everything that determines it: the teacher's weights, the training data
(its spec and its tensors), the preprocessing and augmentation, the views and their seed,
the dtype, top-k or sampled k and the tapped layers; for language models also the
tokenizer, the maximum length and the mode (full, topk, sampled). It lives in
`<store>/cache/<key>/` (or `teacher.cache.path`), is built under a store lock (concurrent
runs build it once) in resumable shards, and is opened memory-mapped. One made from anything
else is refused.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from kdlab.config.schema import CacheSpec, stable_hash
from kdlab.data.base import Split
from kdlab.data.batching import cut_batch
from kdlab.engine import distributed as D
from kdlab.engine.module import teacher_outputs
from kdlab.errors import KdlabError
from kdlab.knowledge.cached import CachedTeacher
from kdlab.knowledge.sparse_logits import sample_fields, topk_fields
from kdlab.knowledge.taps import FeatureTap
from kdlab.methods.base import Method
from kdlab.seeding import derive, generator
from kdlab.store import tensorcache
from kdlab.store.tensorcache import TensorCache

CACHED_TASKS = ("classification", "lm", "token_classification")
SHARD_BATCHES = 16  # batches per resumable shard
SAMPLED_READERS = ("fkl",)  # the methods a sampled cache can answer


def describe(fn) -> Optional[str]:
    """A stable name of a data transform (no memory addresses): module.function and arguments."""
    if fn is None:
        return None
    if isinstance(fn, functools.partial):
        return f"{describe(fn.func)}(*{fn.args!r}, **{sorted(fn.keywords.items())!r})"
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{getattr(fn, '__module__', '')}.{name}"


def tensors_hash(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(f"{k}{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # 0-dim buffers (BN counters) too
    return h.hexdigest()[:16]


def made_from(spec: CacheSpec, teacher: nn.Module, stage, layers: list[str]) -> dict:
    data = stage.data
    return {
        "teacher_weights": tensors_hash(teacher.state_dict()),
        "data": stage.data_spec.model_dump(mode="json", exclude={"batch_size", "eval_batch_size"}),
        "train_rows": tensors_hash(data.train.tensors),
        "preprocessing": describe(data.prepare),
        "augmentation": describe(data.augment) if spec.views else None,
        "views": spec.views,
        "view_seed": spec.seed if spec.views else None,
        "build_batch": stage.data_spec.batch_size if spec.views else None,  # views are drawn per build batch
        "dtype": spec.dtype,
        "topk": spec.topk,
        "layers": layers,
        "task": stage.task.name,
        **({"sampled": spec.sampled, "sample_seed": spec.seed} if spec.sampled else {}),
        **({"mode": spec.mode, "tokenizer": tokenizer_fingerprint(data), "max_length": int(data.input_shape[0])}
           if stage.task.name == "lm" else {}),
    }


def tokenizer_fingerprint(data) -> Optional[str]:
    """What tokenised the data: a Hugging Face tokenizer's fingerprint, or a hash of kdlab's
    word tokenizer's vocabulary (None for token data that came without one)."""
    hf = data.meta.get("hf_tokenizer")
    if hf:
        return f"hf:{hf['fingerprint']}"
    tok = data.meta.get("tokenizer")
    if tok is None:
        return None
    return "words:" + hashlib.sha256(json.dumps([tok.itos, tok.lowercase]).encode()).hexdigest()[:16]


def check_caches(exp, data, task) -> None:
    """Refuse a teacher.cache that cannot apply to this data before any teacher trains."""
    for i, t in enumerate(exp.all_teachers()):
        if t.cache is not None:
            _check(t.cache, data, task, i)


def _check(spec: CacheSpec, data, task, index: int) -> None:
    where = f"teacher {index}'s cache"
    if task.name not in CACHED_TASKS:
        raise KdlabError(f"{where}: teacher.cache is for classification, token-classification and language-model data, not {task.name} "
                         "(a ranking teacher's outputs are embedding lookups already): remove teacher.cache")
    if not isinstance(data.train, Split):
        raise KdlabError(f"{where}: teacher.cache reads the training split in memory and this data is streamed: "
                         "set data.stream: false, or remove teacher.cache")
    if data.augment is not None and not spec.views:
        raise KdlabError(f"{where}: the training data is augmented ({describe(data.augment)}), so fixed outputs would "
                         "not match the images: set teacher.cache.views: K (K augmented views drawn once) or turn augmentation off")
    if spec.views and data.augment is None:
        raise KdlabError(f"{where}: views: {spec.views} is for augmented data and this data has no augmentation: "
                         "remove views (the cache is then exact)")


def _compute(teacher: nn.Module, stage, spec: CacheSpec, layers: list[str], batch_size: int):
    """compute(start, stop) -> the fields of rows [start, stop): row r is sample r mod N in
    view r // N. Views are drawn per build batch from (seed, first row): a resumed build draws
    what an uninterrupted one does."""
    data, task, split = stage.data, stage.task, stage.data.train
    n = len(split)
    dtype = np.float16 if spec.dtype == "float16" else np.float32
    tap = FeatureTap(teacher, layers, "teacher") if layers else None

    def numpy(t: torch.Tensor, float_dtype=dtype) -> np.ndarray:
        t = t.detach().cpu()
        return t.numpy().astype(float_dtype) if t.is_floating_point() else t.numpy()

    def batch_fields(start: int, stop: int) -> dict[str, np.ndarray]:
        index = torch.arange(start % n, (stop - 1) % n + 1, device=next(iter(split.tensors.values())).device)
        batch = cut_batch(split, index, data.prepare)
        out: dict[str, np.ndarray] = {}
        if spec.views:
            x = data.augment(batch["x"], generator(derive(spec.seed, start), batch["x"].device))
            if spec.dtype == "float16" and x.is_floating_point():
                x = x.half().float()  # the teacher sees the stored (rounded) image, as the student will
            batch["x"] = x
            out["x"] = numpy(x, dtype if x.is_floating_point() else None)
        o = teacher_outputs(task, teacher, tap, batch)
        if o.extras:
            raise KdlabError(f"teacher outputs carry {', '.join(o.extras)}, which the teacher cache cannot store: remove teacher.cache")
        if spec.topk:
            k = min(spec.topk, o.logits.shape[-1])
            out.update({f"logits.{f}": numpy(v) for f, v in topk_fields(o.logits, k).items()})
        elif spec.sampled:  # draws seeded by (seed, first row): a resumed build draws the same
            drawn = sample_fields(o.logits, spec.sampled, generator(derive(spec.seed, start, 11), o.logits.device))
            out.update({f"logits.{f}": numpy(v) for f, v in drawn.items()})
        else:
            out["logits"] = numpy(o.logits)
        for i, layer in enumerate(layers):
            out[f"feature{i}"] = numpy(o.features[layer])
        return out

    def compute(start: int, stop: int) -> dict[str, np.ndarray]:
        parts = []
        b = start
        while b < stop:  # build batches never cross a view boundary
            e = min(stop, b + batch_size, (b // n + 1) * n)
            parts.append(batch_fields(b, e))
            b = e
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    return compute, tap


def obtain_cache(ctx, spec: CacheSpec, teacher: nn.Module, stage, layers: list[str], index: int) -> CachedTeacher:
    _check(spec, stage.data, stage.task, index)
    if spec.path is None and ctx.store is None:
        raise KdlabError("teacher.cache needs a run store (--store) or teacher.cache.path")
    record = made_from(spec, teacher, stage, layers)
    key = stable_hash(record)
    path = Path(spec.path) if spec.path else ctx.store.root / "cache" / key
    batch_size = stage.data_spec.batch_size
    rows = len(stage.data.train) * max(spec.views, 1)
    lock_key = "cache-" + stable_hash(str(path.resolve()))
    if ctx.env.main:
        with ctx.store.lock(lock_key) if ctx.store is not None else contextlib.nullcontext():
            if (path / tensorcache.COMPLETE).exists():
                cache = TensorCache.open(path, record)
                ctx.log(f"teacher {index}: reusing its output cache {path} ({_mb(path)})")
            else:
                ctx.log(f"teacher {index}: building its output cache {path} ({rows} rows)")
                compute, tap = _compute(teacher.to(ctx.device).eval(), stage, spec, layers, batch_size)
                extra = {"samples": len(stage.data.train), "views": spec.views, "topk": spec.topk,
                         "sampled": spec.sampled, "features": {layer: f"feature{i}" for i, layer in enumerate(layers)},
                         "teacher": f"{type(teacher).__name__} {sum(p.numel() for p in teacher.parameters()):,} params",
                         "width": int(stage.data.num_classes)}
                try:
                    cache = tensorcache.build(path, record, rows, SHARD_BATCHES * batch_size, compute, extra)
                finally:
                    if tap is not None:
                        tap.remove()
                ctx.log(f"teacher {index}: output cache built ({_mb(path)})")
    D.barrier()
    if not ctx.env.main:
        cache = TensorCache.open(path, record)
    return CachedTeacher(cache, ctx.device)


def _mb(path: Path) -> str:
    return tensorcache.human_size(tensorcache.size_bytes(path))


def check_sampled_readers(specs: list, readers: list[str]) -> None:
    """A sampled cache holds draws, not a distribution: only `fkl` (an unbiased estimate) reads it."""
    others = sorted({name for name in readers if name not in SAMPLED_READERS})
    if any(s is not None and s.sampled for s in specs) and others:
        raise KdlabError(f"teacher.cache.sampled gives an unbiased estimate of the forward KL only, and {', '.join(others)} "
                         "read(s) the teacher: use fkl, or teacher.cache.topk")


def obtain_caches(ctx, stage, methods: list[Method]) -> tuple[list[Optional[CachedTeacher]], Optional[object]]:
    """(per teacher: its cache or None, the views picker or None) for a stage whose
    `teacher_cache` asks for caches."""
    specs = list(stage.teacher_cache)
    if not any(specs) or not stage.teachers:
        return [], None
    check_sampled_readers(specs, [m.name for m in methods if getattr(m, "uses_teacher", True)])
    layers = sorted({layer for m in methods for layer in m.needs().teacher_layers})
    caches = [obtain_cache(ctx, spec, t, stage, layers, i) if spec is not None else None
              for i, (spec, t) in enumerate(zip(specs, stage.teachers))]
    viewed = [c for c in caches if c is not None and c.views]
    if viewed and len(stage.teachers) > 1:
        raise KdlabError("teacher.cache views are for a single teacher (the student sees one stored view per sample): "
                         "remove views or use one teacher")
    return caches, (viewed[0].pick if viewed else None)
