"""`diagnose` pipeline: which knowledge does this teacher give this student?

Obtains the teacher (trained, reused or loaded as usual), then trains the same student with
the same budget and seeds on every rung of the ladder
    CE -> LS -> KD-pt -> KD-sim -> KD-pt+sim -> KD
(the three levels of teacher knowledge: docs/understanding.md) with the `record_w` instrument on every rung, measures each
student's class geometry and the teacher's diagnostics, and writes a report directory
(HTML + PNG plots + Markdown) via `kdlab.report.diagnose_report`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from kdlab.config.schema import Experiment, MethodSpec
from kdlab.engine.evaluation import evaluate
from kdlab.errors import KdlabError
from kdlab.knowledge.instruments import (
    TeacherReport,
    binned_means,
    diagnose_teacher,
    geometry_reference,
    geometry_score,
    model_class_similarity,
    spearman,
    wrong_class_stats,
)
from kdlab.models.build import count_params
from kdlab.registry import PIPELINES
from kdlab.stages.building import load_data
from kdlab.stages.context import RunContext
from kdlab.stages.stage import run_stage, student_stage
from kdlab.stages.teachers import obtain_teachers
from kdlab.tasks.base import get_task

class DiagnoseParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lam: float = Field(0.9, gt=0, le=1)  # weight λ of the teacher term; CE gets 1-λ
    tau: float = Field(1.0, gt=0)  # temperature of KD, KD-pt and KD-pt+sim (and the students)
    sim_tau: float = Field(0.1, gt=0)  # temperature of the class-similarity softmax
    # Where KD-sim / KD-pt+sim get their class relationships (kd_sim's `sim_source`).
    sim_source: Literal["auto", "fc", "class_mean", "class_mean_target"] = "auto"
    # Label smoothing ε; None: matched to the teacher's mean wrong-class mass at tau.
    ls_eps: Optional[float] = Field(None, ge=0, lt=1)
    report_dir: Optional[str] = None  # default: <store>/reports/<name>-<time>


@dataclass
class DiagnoseResult:
    name: str
    metric: str
    params: dict
    setup: dict
    seeds: list[int]
    # rung -> per-seed records: accuracy, geometry, w statistics
    rungs: dict[str, list[dict]] = field(default_factory=dict)
    # rung -> first seed's class-similarity matrix (numpy), plus "teacher" and "reference"
    similarity: dict[str, np.ndarray] = field(default_factory=dict)
    reference_name: str = ""
    class_order: list[int] = field(default_factory=list)
    # rung -> (mean w over training per example, q_t) for the first seed
    w_samples: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    teacher: Optional[TeacherReport] = None
    teacher_test: dict = field(default_factory=dict)
    report_dir: str = ""
    markdown: str = ""
    elapsed_s: float = 0.0

    def render(self):
        from rich.markdown import Markdown

        return Markdown(self.markdown)


def ladder_methods(p: DiagnoseParams, ls_eps: float) -> dict[str, list[MethodSpec]]:
    lam, tau = p.lam, p.tau
    ce = [MethodSpec(name="ce", weight=1 - lam)] if lam < 1 else []
    probe = [MethodSpec(name="record_w")]
    sim = {"tau": tau, "sim_tau": p.sim_tau, "sim_source": p.sim_source}
    return {
        "CE": [MethodSpec(name="ce"), *probe],
        "LS": [MethodSpec(name="ls", eps=ls_eps), *probe],
        "KD-pt": [*ce, MethodSpec(name="kd_pt", weight=lam, tau=tau), *probe],
        "KD-sim": [*ce, MethodSpec(name="kd_sim", weight=lam, **sim), *probe],
        "KD-pt+sim": [*ce, MethodSpec(name="kd_pt_sim", weight=lam, **sim), *probe],
        "KD": [*ce, MethodSpec(name="kd", weight=lam, tau=tau), *probe],
    }


def matched_ls_eps(teacher, data, tau: float) -> float:
    """ε whose wrong-class mass ε(K-1)/K equals the teacher's mean wrong-class mass at tau."""
    from kdlab.knowledge.instruments import predict_logits, split_labels

    probs = torch.softmax(predict_logits(teacher, data.train, data.prepare) / tau, dim=1)
    q_t = float(wrong_class_stats(probs, split_labels(data.train, probs))["q_t"].mean())
    k = data.num_classes
    return float(min(max((1 - q_t) * k / (k - 1), 0.0), 0.99))


def teacher_train_size(exp: Experiment, data) -> int:
    spec = exp.all_teachers()[0]
    if spec.checkpoint:
        return -1  # unknown: a loaded checkpoint
    return len(data.train) if spec.data is None else len(load_data(spec.data).train)


def _default_report_dir(ctx: RunContext, name: str) -> str:
    root = Path(ctx.store.root) if ctx.store is not None else Path("kdlab-reports")
    return str(root / "reports" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")


@PIPELINES.register(
    "diagnose",
    "train the ladder CE, LS, KD-pt, KD-sim, KD-pt+sim, KD on every seed and report which knowledge the teacher gives",
    params=DiagnoseParams,
    variants=False,
)
def run_diagnose(exp: Experiment, ctx: RunContext) -> DiagnoseResult:
    started = time.perf_counter()
    params: DiagnoseParams = exp.pipeline.params()
    if len(exp.all_teachers()) != 1:
        raise KdlabError("diagnose needs exactly one teacher: add a `teacher:` section (a model to train, or a checkpoint)")
    data = load_data(exp.data).to(ctx.device)
    if data.task != "classification":
        raise KdlabError(f"diagnose works on classification data; '{exp.data.name}' is a {data.task} task")
    if data.num_classes < 3:
        raise KdlabError("diagnose needs at least 3 classes (class relationships need more than one wrong class)")
    task = get_task(data)
    metric = task.primary_metric
    teacher = obtain_teachers(ctx, exp, data, task)[0]
    t_eval = evaluate(teacher, data.test, task, data.prepare, exp.data.eval_batch_size)
    ls_eps = params.ls_eps if params.ls_eps is not None else matched_ls_eps(teacher, data, params.tau)
    if len(exp.seeds) < 3:
        ctx.log(f"[yellow]diagnose: {len(exp.seeds)} seed(s); use at least 3 for error bars you can trust[/yellow]")

    reference, ref_name = geometry_reference(data, teacher)
    out = DiagnoseResult(
        name=exp.name,
        metric=metric,
        params={**params.model_dump(), "ls_eps_used": ls_eps},
        setup={
            "data": exp.data.name,
            "teacher": exp.all_teachers()[0].model.source,
            "teacher_params": count_params(teacher),
            "student": exp.student.source,
            "epochs": exp.train.epochs,
            "num_classes": data.num_classes,
            "train_size": len(data.train),
            # Transfer-set regime (teacher.data / data.train_fraction): the teacher saw its own
            # training split; the student, the w probe and the teacher diagnostics use the student's.
            "teacher_train_size": teacher_train_size(exp, data),
        },
        seeds=list(exp.seeds),
        reference_name=ref_name,
        teacher_test={f"test_{k}": v for k, v in t_eval.items()},
    )
    sc = getattr(data, "superclass", None)
    out.class_order = [int(i) for i in np.argsort(np.asarray(sc), kind="stable")] if sc else list(range(data.num_classes))
    out.teacher = diagnose_teacher(teacher, data, params.tau)
    out.similarity["teacher"] = model_class_similarity(teacher, data).numpy()
    out.similarity["reference"] = reference.numpy()

    for rung, methods in ladder_methods(params, ls_eps).items():
        for seed in exp.seeds:
            stage = run_stage(ctx, student_stage(exp, data, task, methods=methods, seed=seed, variant=rung,
                                                 teachers=[teacher], label=f"{rung} seed {seed}"))
            sim = model_class_similarity(stage.model, data)
            rec = next(m for m in stage.result.methods if m.name == "record_w")
            w, q = rec.mean_arrays()
            bins = binned_means(q, w, 5)
            out.rungs.setdefault(rung, []).append({
                "seed": seed,
                "run_id": stage.run_id,
                metric: stage.summary.get(f"test_{metric}"),
                "geometry": geometry_score(sim, reference),
                "w_mean": float(w.mean()) if len(w) else float("nan"),
                "w_q_spearman": spearman(w, q),
                "w_bins": bins,
            })  # fmt: skip
            if seed == exp.seeds[0]:
                out.similarity[rung] = sim.numpy()
                out.w_samples[rung] = (w, q)

    out.report_dir = params.report_dir or _default_report_dir(ctx, exp.name)
    out.elapsed_s = time.perf_counter() - started
    from kdlab.report.diagnose_report import write_report

    if ctx.env.main:
        out.markdown = write_report(out, out.report_dir)
    return out
