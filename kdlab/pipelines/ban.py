"""`ban`: Born-Again Networks (Furlanello et al. 2018, arXiv:1805.04770).

Generation 0 is the student architecture trained with the experiment's `methods` (usually
`ce`). Generation k (1…generations) is the same architecture trained with the pipeline's
`distill` methods, taught by generation k−1 — or, with `ensemble_teacher: true`, by the
ensemble of all earlier generations (their averaged probabilities; its logits are the log of
that average). Every generation runs on every seed; the result also gives the test accuracy
of the ensemble of all generations (BAN's "born-again ensemble").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from kdlab.config.schema import CacheSpec, Experiment, MethodSpec
from kdlab.engine.evaluation import evaluate
from kdlab.registry import PIPELINES
from kdlab.stages.building import load_data
from kdlab.stages.context import RunContext
from kdlab.stages.stage import run_stage, student_stage
from kdlab.tasks.base import get_task


def _default_distill() -> list[MethodSpec]:
    return [MethodSpec(name="kd", tau=1.0)]


class BANParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    generations: int = Field(2, ge=1, le=20)  # born-again generations after generation 0
    ensemble_teacher: bool = False
    distill: list[MethodSpec] = Field(default_factory=_default_distill, min_length=1)
    # Cache each teacher generation's outputs (as teacher.cache does; true: the defaults): the
    # next generation then runs its teacher once instead of every epoch. Keyed by the teacher's
    # weights, so every generation and seed gets its own cache, in the store.
    cache: Optional[CacheSpec] = None

    @field_validator("cache", mode="before")
    @classmethod
    def _cache_flag(cls, v):
        return ({} if v else None) if isinstance(v, bool) else v

    @field_validator("cache")
    @classmethod
    def _no_path(cls, v):
        if v is not None and v.path is not None:
            raise ValueError("cache.path would hold one generation's cache only; leave it out (caches go to the store)")
        return v


class Ensemble(nn.Module):
    """Averages the members' probabilities; returns log of the average as logits."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x):
        probs = torch.stack([m(x).float().softmax(-1) for m in self.members]).mean(0)
        return probs.clamp_min(1e-12).log()


@dataclass
class BANResult:
    name: str
    metric: str
    results: dict[str, list[dict]] = field(default_factory=dict)

    def render(self):
        from kdlab.report.tables import comparison_rows, rich_table

        header, rows = comparison_rows(self.results, self.metric, "gen0" if "gen0" in self.results else None, label="generation")
        return rich_table(header, rows, title=f"{self.name} (born-again generations)")


@PIPELINES.register("ban", "born-again networks: generation k of the same architecture distilled from k-1 (or the ensemble)",
                    params=BANParams, cache_hint="to cache each generation's outputs for the next, set pipeline.cache: true")
def run_ban(exp: Experiment, ctx: RunContext) -> BANResult:
    """Generation 0 of each variant trains with that variant's methods (`methods` alone: one
    chain); rows are `gen<k>` (prefixed by the variant when there are several)."""
    params: BANParams = exp.pipeline.params()
    data = load_data(exp.data).to(ctx.device)
    task = get_task(data)
    out = BANResult(exp.name, task.primary_metric)
    sets = exp.method_sets()
    for variant, gen0 in sets.items():
        prefix = f"{variant} " if len(sets) > 1 else ""
        for seed in exp.seeds:
            gens: list[nn.Module] = []
            for k in range(params.generations + 1):
                methods = gen0 if k == 0 else params.distill
                teachers = [] if k == 0 else [Ensemble(gens) if params.ensemble_teacher and k > 1 else gens[-1]]
                stage = run_stage(ctx, student_stage(
                    exp, data, task, methods=methods, seed=seed, variant=f"{prefix}gen{k}".replace(" ", "-"),
                    teachers=teachers, record={"ban": params.model_dump(mode="json"), "gen0": [m.model_dump(mode="json") for m in gen0]},
                    teacher_cache=[params.cache] if teachers else [],
                ))
                gens.append(stage.model.eval())
                out.results.setdefault(f"{prefix}gen{k}", []).append(stage.row())
            ens = evaluate(Ensemble(gens), data.test, task, data.prepare, exp.data.eval_batch_size)
            out.results.setdefault(f"{prefix}ensemble", []).append({"seed": seed, **{f"test_{k}": v for k, v in ens.items()}})
    return out
