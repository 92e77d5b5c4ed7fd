"""The default pipeline: obtain the teachers, then train each variant's student on every seed."""

from __future__ import annotations

from dataclasses import dataclass, field

from kdlab.config.schema import Experiment
from kdlab.engine.evaluation import evaluate
from kdlab.engine.trainer import count_params
from kdlab.pipelines.building import load_data, preflight
from kdlab.pipelines.context import RunContext
from kdlab.pipelines.teachers import obtain_teachers
from kdlab.pipelines.training import train_stage
from kdlab.registry import PIPELINES
from kdlab.tasks.base import get_task


@dataclass
class ExperimentResult:
    name: str
    metric: str
    # variant -> one summary per seed
    results: dict[str, list[dict]] = field(default_factory=dict)
    teachers: list[dict] = field(default_factory=list)
    baseline: str | None = "ce"


@PIPELINES.register("distill", "obtain the teachers, then train every variant's student on every seed")
def run_distill(exp: Experiment, ctx: RunContext) -> ExperimentResult:
    data = load_data(exp.data).to(ctx.device)
    task = get_task(data)
    preflight(exp, data, task, ctx.device)
    # Teachers are trained or loaded only if some method reads them.
    teachers = obtain_teachers(ctx, exp, data, task) if exp.uses_teacher() else []
    out = ExperimentResult(exp.name, task.primary_metric)
    for t in teachers:
        ev = evaluate(t, data.test, task, data.prepare, exp.data.eval_batch_size)
        out.teachers.append({"params": count_params(t), **{f"test_{k}": v for k, v in ev.items()}})
    sets = exp.method_sets()
    out.baseline = "ce" if "ce" in sets else None
    for variant, methods in sets.items():
        grp = exp.group_hash(methods)
        for seed in exp.seeds:
            stage = train_stage(
                ctx,
                name=exp.name,
                kind="student",
                model_spec=exp.student,
                method_specs=methods,
                teachers=teachers,
                data=data,
                task=task,
                train=exp.train,
                batch_size=exp.data.batch_size,
                eval_batch_size=exp.data.eval_batch_size,
                seed=seed,
                grp=grp,
                variant=variant,
                config={**exp.model_dump(mode="json", exclude={"variants"}), "methods": [m.model_dump(mode="json") for m in methods], "seed": seed, "variant": variant},
            )
            out.results.setdefault(variant, []).append({**stage.summary, "run_id": stage.run_id, "seed": seed})
    return out
