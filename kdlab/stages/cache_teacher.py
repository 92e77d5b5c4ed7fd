"""`kdlab cache-teacher`: run each teacher once over the training data and keep its outputs
in the teacher-output cache (`teacher_cache`) that `kdlab run` of the same config then reads
instead of the teacher's forward pass: the same key, folder and refusal of a mismatch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kdlab.config.schema import Experiment, needs_teacher
from kdlab.errors import KdlabError
from kdlab.stages.building import load_data, preflight
from kdlab.stages.context import RunContext
from kdlab.stages.stage import student_stage
from kdlab.stages.teacher_cache import check_sampled_readers, obtain_cache
from kdlab.stages.teachers import obtain_teachers
from kdlab.store import tensorcache
from kdlab.tasks.base import get_task


@dataclass
class CacheReport:
    teacher: int
    path: Path
    mode: str  # full | topk | sampled
    k: int | None
    rows: int  # samples (sequences for a language model)
    tokens: int  # positions with a stored distribution
    bytes: int

    @property
    def bytes_per_million_tokens(self) -> float:
        return self.bytes / self.tokens * 1e6


def cache_teachers(exp: Experiment, ctx: RunContext) -> list[CacheReport]:
    """Build (or find complete) the cache of every teacher whose config has `cache:`; the
    logits-only cache (methods that tap teacher layers build theirs when they run)."""
    name = exp.pipeline.name if exp.pipeline else "distill"
    if name != "distill":
        raise KdlabError(f"cache-teacher fills the cache that the distill pipeline reads; pipeline '{name}' runs its "
                         "teacher on other tokens (generated ones): remove teacher.cache and run it as it is")
    specs = [t.cache for t in exp.all_teachers()]
    if not any(specs):
        raise KdlabError("cache-teacher: no teacher has a cache setting: add e.g. `cache: {topk: 32}` "
                         "(or `cache: {sampled: 32}`) under `teacher:`")
    check_sampled_readers(specs, [m.name for ms in exp.method_sets().values() for m in ms if needs_teacher(m)])
    data = load_data(exp.data).to(ctx.device)
    task = get_task(data)
    preflight(exp, data, task, ctx.device)
    teachers = obtain_teachers(ctx, exp, data, task)
    stage = student_stage(exp, data, task, methods=exp.method_sets()[next(iter(exp.method_sets()))], seed=exp.seeds[0],
                          variant=None, teachers=teachers)
    per_row = int(data.input_shape[0]) if task.name == "lm" else 1
    out = []
    for i, (spec, teacher) in enumerate(zip(specs, teachers)):
        if spec is None:
            continue
        cache = obtain_cache(ctx, spec, teacher, stage, [], i).cache
        k = spec.topk or spec.sampled
        out.append(CacheReport(i, cache.path, spec.mode, k, cache.rows, cache.rows * per_row,
                               tensorcache.size_bytes(cache.path)))
    return out
