"""The default pipeline: obtain the teachers, then train each variant's student on every seed."""

from __future__ import annotations

from dataclasses import dataclass, field

from kdlab.config.schema import Experiment
from kdlab.engine.evaluation import evaluate
from kdlab.models.build import count_params
from kdlab.registry import PIPELINES
from kdlab.stages.building import load_data, preflight
from kdlab.stages.context import RunContext
from kdlab.stages.stage import run_stage, student_stage
from kdlab.stages.teachers import obtain_teachers
from kdlab.tasks.base import get_task


@dataclass
class ExperimentResult:
    name: str
    metric: str
    # variant -> one summary per seed
    results: dict[str, list[dict]] = field(default_factory=dict)
    teachers: list[dict] = field(default_factory=list)
    baseline: str | None = "ce"
    notes: list[str] = field(default_factory=list)  # lines shown under the teachers (e.g. stored generations)

    def render(self):
        from rich.console import Group
        from rich.text import Text

        from kdlab.report.tables import comparison_rows, rich_table

        lines = [Text(f"teacher {i}: {t['params']:,} params, test {self.metric} "
                      f"{t.get('test_' + self.metric, float('nan')):.2f} (the weights distilled from: best-val epoch "
                      "or given checkpoint)")
                 for i, t in enumerate(self.teachers)] + [Text(n) for n in self.notes]
        header, rows = comparison_rows(self.results, self.metric, self.baseline)
        return Group(*lines, rich_table(header, rows, title=self.name))


def new_result(exp: Experiment, data, task, teachers) -> ExperimentResult:
    """An empty result that shows the teachers' test scores."""
    out = ExperimentResult(exp.name, task.primary_metric)
    for t in teachers:
        ev = evaluate(t, data.test, task, data.prepare, exp.data.eval_batch_size)
        out.teachers.append({"params": count_params(t), **{f"test_{k}": v for k, v in ev.items()}})
    return out


@PIPELINES.register("distill", "obtain the teachers, then train every variant's student on every seed",
                    teacher_cache=True)
def run_distill(exp: Experiment, ctx: RunContext) -> ExperimentResult:
    data = load_data(exp.data).to(ctx.device)
    task = get_task(data)
    preflight(exp, data, task, ctx.device)
    # Teachers are trained or loaded only if some method reads them.
    teachers = obtain_teachers(ctx, exp, data, task) if exp.uses_teacher() else []
    out = new_result(exp, data, task, teachers)
    sets = exp.method_sets()
    out.baseline = "ce" if "ce" in sets else None
    for variant, methods in sets.items():
        for seed in exp.seeds:
            stage = run_stage(ctx, student_stage(exp, data, task, methods=methods, seed=seed, variant=variant,
                                                 teachers=teachers, teacher_cache=[t.cache for t in exp.all_teachers()]))
            out.results.setdefault(variant, []).append(stage.row())
    return out
