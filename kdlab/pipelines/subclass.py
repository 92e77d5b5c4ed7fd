"""`subclass` pipeline: the subclass-distillation comparison, one teacher per seed.

For every seed: train (or reuse) the teacher with that seed, evaluate it, then train every
variant's student from it with the same seed. Teacher and students therefore all have a
spread over seeds. When the data keeps finer labels (`fine`), the result also shows which
natural subclasses the first seed's teacher's learned subclasses capture (test split).

With `fractions`, the comparison is repeated with the student trained on each fraction of the
training split (`data.train_fraction`), and with `steps` each student run takes that many
optimiser steps whatever its data (epochs = steps / batches per epoch, rounded up), so the data
is the only thing that changes between fractions. The teacher's own `data:` section keeps it on
the full split. The result shows each arm's gain over scratch per fraction, and a plot of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Optional

from pydantic import BaseModel, ConfigDict, Field

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
    # Student data fractions to sweep (each overrides `data.train_fraction`); none: the config's.
    fractions: Optional[list[Annotated[float, Field(gt=0, le=1)]]] = Field(None, min_length=1)
    # Optimiser steps of every student run (sets `train.epochs` per fraction); none: `train.epochs`.
    steps: Optional[int] = Field(None, ge=1)


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


@dataclass
class SubclassSweep:
    """The comparison at each student data fraction, at a fixed number of student steps."""
    name: str
    metric: str
    points: list[dict] = field(default_factory=list)  # fraction, train size, epochs, steps, result
    plot_path: Optional[str] = None

    def render(self):
        from rich.console import Group
        from rich.text import Text

        from kdlab.report.fraction_sweep import sweep_rows
        from kdlab.report.tables import rich_table

        header, rows = sweep_rows(self.points, self.metric)
        parts = [rich_table(header, rows, title=f"{self.name}: test {self.metric} (last epoch) by the student's data")]
        if self.plot_path:
            parts.append(Text(f"gain plot: {self.plot_path}"))
        return Group(*parts)


@PIPELINES.register("subclass", "subclass distillation comparison: one teacher per seed, then every variant", params=SubclassParams)
def run_subclass(exp: Experiment, ctx: RunContext):
    params: SubclassParams = exp.pipeline.params()
    if exp.teacher is None:
        raise KdlabError("the subclass pipeline needs a `teacher:` section (a subclass-head model trained with ce + subclass_aux)")
    if params.fractions is None and params.steps is None:
        return compare(exp, ctx, load_data(exp.data).to(ctx.device), params.table)
    sweep, every = None, None
    for fraction in params.fractions or [exp.data.train_fraction]:
        fexp = exp.model_copy(update={"data": exp.data.model_copy(update={"train_fraction": fraction})})
        data = load_data(fexp.data).to(ctx.device)
        per_epoch = -(-len(data.train) // exp.data.batch_size)
        epochs, steps = budget(len(data.train), exp.data.batch_size, params.steps or 0, exp.train.epochs)
        # Validate and checkpoint as often in steps as at the first fraction (not every epoch of
        # one batch): the best-validation pick has the same chances, and tiny epochs stay cheap.
        every = every or {k: getattr(exp.train, k) * per_epoch for k in ("eval_every", "checkpoint_every")}
        train = {"epochs": epochs, **{k: max(1, round(v / per_epoch)) for k, v in every.items()}}
        fexp = fexp.model_copy(update={"train": exp.train.model_copy(update=train)})
        ctx.log(f"student data {fraction:g} of the training split: {len(data.train)} examples, {epochs} epochs = {steps} steps")
        result = compare(fexp, ctx, data, params.table and fraction == (params.fractions or [fraction])[0])
        sweep = sweep or SubclassSweep(exp.name, result.metric)
        sweep.points.append({"fraction": fraction, "train": len(data.train), "epochs": epochs, "steps": steps, "result": result})
    if ctx.env.main and len(sweep.points) > 1:
        from kdlab.report.fraction_sweep import gain_plot

        root = Path(ctx.store.root) if ctx.store is not None else Path(".")
        target = root / "subclass" / f"{exp.name}-{exp.group_hash()}" / "gain_vs_fraction.png"
        sweep.plot_path = str(gain_plot(sweep.points, sweep.metric, target, title=f"{exp.name} ({len(exp.seeds)} seeds)"))
        ctx.log(f"gain plot: {sweep.plot_path}")
    return sweep


def budget(examples: int, batch_size: int, steps: int, epochs: int) -> tuple[int, int]:
    """(epochs, steps) of a student run: `steps` rounded up to whole epochs, or `epochs` as given."""
    per_epoch = -(-examples // batch_size)
    if steps:
        epochs = -(-steps // per_epoch)
    return epochs, epochs * per_epoch


def compare(exp: Experiment, ctx: RunContext, data, table: bool) -> SubclassResult:
    """Per seed: the teacher (trained or reused), then every variant's student from it."""
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
    if table and "fine" in data.test.head(1) and hasattr(first_teacher, "subclass_forward"):
        from kdlab.report.subclasses import subclass_counts

        out.counts = subclass_counts(first_teacher, data.test, data.prepare, exp.data.eval_batch_size)
        out.subclasses = first_teacher.subclasses
        out.fine_names = data.meta.get("fine_names")
    return out
