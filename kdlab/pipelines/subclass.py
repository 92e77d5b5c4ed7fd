"""`subclass` pipeline: the subclass-distillation comparison, one teacher per seed.

For every seed: train (or reuse) the teacher with that seed, evaluate it, then train every
variant's student from it with the same seed. Teacher and students therefore all have a
spread over seeds. When the data keeps finer labels (`fine`), the result also shows which
natural subclasses the first seed's teacher's learned subclasses capture (test split).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from pydantic import BaseModel, ConfigDict

from kdlab.config.schema import Experiment
from kdlab.engine.evaluation import evaluate
from kdlab.errors import KdlabError
from kdlab.models.build import count_params
from kdlab.registry import PIPELINES
from kdlab.stages.building import load_data
from kdlab.stages.context import RunContext
from kdlab.stages.stage import run_stage, student_stage
from kdlab.stages.teachers import obtain_teacher
from kdlab.tasks.base import get_task


class SubclassParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    table: bool = True  # show the learned-subclass × fine-label table when `fine` exists


@dataclass
class SubclassResult:
    name: str
    metric: str
    results: dict[str, list[dict]] = field(default_factory=dict)  # "teacher" and each variant
    baseline: Optional[str] = None
    counts: object = None
    subclasses: int = 0
    fine_names: Optional[list[str]] = None

    def render(self):
        from rich.console import Group

        from kdlab.report.subclasses import counts_rows, purity
        from kdlab.report.tables import comparison_rows, rich_table

        header, rows = comparison_rows(self.results, self.metric, self.baseline)
        parts = [rich_table(header, rows, title=self.name)]
        if self.counts is not None:
            h, r = counts_rows(self.counts, self.subclasses, self.fine_names)
            parts.append(rich_table(h, r, title=f"teacher (seed {self.results['teacher'][0]['seed']}): learned subclass × "
                                    f"fine label, test split; purity {purity(self.counts):.1f}%"))
        return Group(*parts)


@PIPELINES.register("subclass", "subclass distillation comparison: one teacher per seed, then every variant", params=SubclassParams)
def run_subclass(exp: Experiment, ctx: RunContext) -> SubclassResult:
    params: SubclassParams = exp.pipeline.params()
    if exp.teacher is None:
        raise KdlabError("the subclass pipeline needs a `teacher:` section (a subclass-head model trained with ce + subclass_aux)")
    data = load_data(exp.data).to(ctx.device)
    task = get_task(data)
    sets = exp.method_sets()
    out = SubclassResult(exp.name, task.primary_metric, baseline="scratch" if "scratch" in sets else None)
    first_teacher = None
    for seed in exp.seeds:
        spec = exp.teacher.model_copy(update={"seed": seed})
        teacher = obtain_teacher(ctx, spec, exp, data, task)
        first_teacher = first_teacher or teacher
        ev = evaluate(teacher, data.test, task, data.prepare, exp.data.eval_batch_size)
        out.results.setdefault("teacher", []).append(
            {"params": count_params(teacher), "seed": seed, **{f"test_{k}": v for k, v in ev.items()}}
        )
        for variant, methods in sets.items():
            stage = run_stage(ctx, student_stage(exp, data, task, methods=methods, seed=seed, variant=variant,
                                                 teachers=[teacher]))
            out.results.setdefault(variant, []).append(stage.row())
    if params.table and "fine" in data.test.head(1) and hasattr(first_teacher, "subclass_forward"):
        from kdlab.report.subclasses import subclass_counts

        out.counts = subclass_counts(first_teacher, data.test, data.prepare, exp.data.eval_batch_size)
        out.subclasses = first_teacher.subclasses
        out.fine_names = data.meta.get("fine_names")
    return out
