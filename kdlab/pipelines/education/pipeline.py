"""`pipeline: {name: education}`: education distillation (Feng et al., arXiv:2311.13811)
compared, on the same seeds and epoch budget, with the CE student, single-teacher KD and
the multi-teacher `avg` and `ca_mkd` baselines."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from kdlab.config.schema import Experiment, MethodSpec
from kdlab.data.stream import StreamSplit
from kdlab.engine.evaluation import evaluate
from kdlab.errors import KdlabError
from kdlab.models.build import build_model, count_params
from kdlab.pipelines.education.grades import EducationCurriculum, plan_grades
from kdlab.pipelines.education.group_teachers import (
    group_bundle,
    obtain_generalists,
    per_group_teachers,
    sliced_generalists,
)
from kdlab.pipelines.education.growth import check_staged
from kdlab.pipelines.education.params import EducationParams
from kdlab.pipelines.education.partition import confusion_matrix, partition_classes
from kdlab.registry import PIPELINES
from kdlab.report.stats import fmt, mean_std
from kdlab.seeding import seed_everything
from kdlab.stages.building import load_data
from kdlab.stages.context import RunContext
from kdlab.stages.stage import run_stage, student_stage
from kdlab.tasks.base import get_task


@dataclass
class EducationResult:
    name: str
    metric: str
    groups: list[list[int]]
    grade_starts: list[int]
    # variant ("ed", "ce", "kd", "avg", "ca_mkd") -> one summary per seed
    results: dict[str, list[dict]] = field(default_factory=dict)
    teachers: list[dict] = field(default_factory=list)
    plot_path: Optional[str] = None
    arms_plot_path: Optional[str] = None  # with ablation arms: every row's final test accuracy

    def grade_table(self) -> list[list[tuple[float, float] | None]]:
        """[grade][group] -> (mean, std) of the test accuracy on the group at the grade's end."""
        runs = [r["grade_accuracy"] for r in self.results.get("ed", [])]
        table = []
        for g in range(len(self.grade_starts)):
            row = []
            for k in range(len(self.groups)):
                vals = [r[g][str(k + 1)] for r in runs if str(k + 1) in r[g]]
                row.append(mean_std(vals) if vals else None)
            table.append(row)
        return table

    def render(self):
        from rich.console import Group
        from rich.text import Text

        from kdlab.report.tables import comparison_rows, rich_table

        parts = [Text("groups: " + "; ".join(f"{k + 1}: {g}" for k, g in enumerate(self.groups)))]
        for t in self.teachers:
            parts.append(Text(f"{t['role']}: {t['params']:,} params, test {self.metric} {t['test_top1']:.2f} "
                              f"(on its {t['classes']} classes)"))
        header, rows = comparison_rows(self.results, self.metric, "ce" if "ce" in self.results else None, label="method")
        header.insert(3, "steps per run")
        for row, runs in zip(rows, self.results.values()):
            row.insert(3, "/".join(sorted({f"{r['steps']:,}" for r in runs if "steps" in r})) or "–")
        parts.append(rich_table(header, rows, title=f"{self.name}: final test {self.metric}, mean ± std over seeds"))
        gh = ["after grade (epochs)"] + [f"group {k + 1}" for k in range(len(self.groups))]
        ends = self.grade_starts[1:] + [None]
        grows = []
        for g, row in enumerate(self.grade_table()):
            span = f"{self.grade_starts[g] + 1}-{ends[g]}" if ends[g] is not None else f"{self.grade_starts[g] + 1}-end"
            grows.append([f"{g + 1} ({span})"] + [fmt(*c) if c else "–" for c in row])
        parts.append(rich_table(gh, grows, title="ED: test accuracy on each group at the end of each grade"))
        if self.plot_path:
            parts.append(Text(f"forgetting plot: {self.plot_path}"))
        if self.arms_plot_path:
            parts.append(Text(f"ablation plot: {self.arms_plot_path}"))
        return Group(*parts)


def baseline_methods(name: str, p: EducationParams) -> list[MethodSpec]:
    """The baselines use ED's mix: alpha * CE + (1 - alpha) * (KD term at the same tau)."""
    if name == "ce":
        return [MethodSpec(name="ce")]
    return [MethodSpec(name="ce", weight=p.alpha), MethodSpec(name=name, weight=1 - p.alpha, tau=p.tau)]


def ed_stage(exp, data, task, seed, variant, plan, teachers, p: EducationParams, groups):
    """One ED run: the student grown grade by grade under `p` (the pipeline's or an arm's)."""
    return student_stage(
        exp, data, task, methods=[], seed=seed, variant=variant, label=f"{variant} seed {seed}",
        curriculum=EducationCurriculum(plan, teachers, p),
        record={"education": p.model_dump(mode="json", exclude={"arms"}), "groups": groups},
    )


def _teacher_info(role, model, data, task, classes) -> dict:
    ev = evaluate(model, data.test, task, data.prepare, 1024)
    return {"role": role, "params": count_params(model), "test_top1": ev.get("top1", float("nan")),
            "classes": classes}


@PIPELINES.register(
    "education",
    "education distillation: grow the student grade by grade from per-group teachers, vs CE/KD/avg/CA-MKD",
    "Feng et al. 2023, arXiv:2311.13811",
    params=EducationParams,
    variants=False,
)
def run_education(exp: Experiment, ctx: RunContext) -> EducationResult:
    p: EducationParams = exp.pipeline.params()
    data = load_data(exp.data).to(ctx.device)
    task = get_task(data)
    if task.name != "classification":
        raise KdlabError(f"education distillation is for classification data; '{exp.data.name}' is a {task.name} task")
    if isinstance(data.train, StreamSplit):
        # Group teachers train on relabelled subsets of the training split, held in memory.
        raise KdlabError("education distillation relabels the training split by class group in memory, but the data "
                         "is streamed: set data.stream: false (or a larger data.memory_budget)")
    seed_everything(exp.seeds[0])
    body = check_staged(build_model(exp.student, data))

    # Full-class teachers: generalist 0 for KD, the confusion partition and sliced teaching;
    # `baseline_teachers` of them for the multi-teacher baselines.
    n_gen = 0
    if "kd" in p.baselines or p.partition == "confusion":
        n_gen = 1
    if p.teacher_mode == "generalist":
        n_gen = max(n_gen, p.teachers_per_group)
    if {"avg", "ca_mkd"} & set(p.baselines):
        n_gen = max(n_gen, p.baseline_teachers)
    generalists = obtain_generalists(ctx, exp, data, task, n_gen) if n_gen else []
    generalists = [g.to(ctx.device).eval() for g in generalists]

    confusion = None
    if p.partition == "confusion":
        with torch.inference_mode():
            x = data.prepare(data.val["x"]) if data.prepare else data.val["x"]
            confusion = confusion_matrix(generalists[0](x), data.val["y"], data.num_classes)
    groups = partition_classes(p.partition, data.num_classes, p.groups, p.group_sizes, p.partition_seed,
                               data.superclass, confusion)
    plan = plan_grades(p, groups, body, exp.train.epochs)
    ctx.log("education groups: " + "; ".join(f"{k + 1}: {g}" for k, g in enumerate(groups)))

    if p.teacher_mode == "per_group":
        teachers = per_group_teachers(ctx, exp, data, task, p, groups)
    else:
        teachers = sliced_generalists(generalists, groups, p.teachers_per_group)

    out = EducationResult(exp.name, task.primary_metric, groups, plan.starts)
    for i, gt in enumerate(generalists):
        out.teachers.append(_teacher_info(f"teacher {i} (all classes)", gt, data, task, data.num_classes))
    if p.teacher_mode == "per_group":
        for k, gt in enumerate(teachers):
            for i, m in enumerate(gt.models):
                out.teachers.append(_teacher_info(f"group {k + 1} teacher {i}", m, group_bundle(data, groups[k]), task,
                                                  len(groups[k])))

    histories = []
    for seed in exp.seeds:
        stage = run_stage(ctx, ed_stage(exp, data, task, seed, "ed", plan, teachers, p, groups))
        histories.append(stage.result.history)
        out.results.setdefault("ed", []).append(stage.row())
    for name in p.arms:
        ap = p.arm(name)
        arm_plan = plan_grades(ap, groups, body, exp.train.epochs)
        for seed in exp.seeds:
            stage = run_stage(ctx, ed_stage(exp, data, task, seed, name, arm_plan, teachers, ap, groups))
            out.results.setdefault(name, []).append(stage.row())

    for name in p.baselines:
        methods = baseline_methods(name, p)
        ts = [] if name == "ce" else generalists[:1] if name == "kd" else generalists[: p.baseline_teachers]
        for seed in exp.seeds:
            stage = run_stage(ctx, student_stage(exp, data, task, methods=methods, seed=seed, variant=name, teachers=ts))
            steps = exp.train.epochs * -(-len(data.train) // exp.data.batch_size)
            out.results.setdefault(name, []).append({"steps": steps, **stage.row()})

    if ctx.env.main:
        from kdlab.report.forgetting import forgetting_plot

        root = Path(ctx.store.root) if ctx.store is not None else Path(".")
        target = root / "education" / f"{exp.name}-{exp.group_hash()}" / "forgetting.png"
        out.plot_path = str(forgetting_plot(histories, len(groups), plan.starts, target,
                                            title=f"{exp.name}: ED accuracy per class group ({len(exp.seeds)} seeds)"))
        ctx.log(f"forgetting plot: {out.plot_path}")
        if p.arms:
            from kdlab.report.arms import arms_plot

            out.arms_plot_path = str(arms_plot(out.results, task.primary_metric, target.with_name("arms.png"),
                                               reference="ce", title=f"{exp.name} ({len(exp.seeds)} seeds)"))
            ctx.log(f"ablation plot: {out.arms_plot_path}")
    return out
