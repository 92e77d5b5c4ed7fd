"""The grade loop: grow the student stage by stage over one lr schedule spanning all grades.

Each epoch of grade g replays every group seen so far, each batch drawn from one group and
taught by that group's teacher (groups in sequence, or their batches interleaved in a seeded
order). At growth the TR head is dropped and a new one (or, in the last grade, the student's
own head) is attached; the optimiser is rebuilt over the parameters now in use, carrying the
state of surviving parameters only when asked. Evaluation is in eval mode on held-out splits.

Resume follows the engine's conventions: `last.pt` at every epoch end holds the grade model
(student + current TR head), the optimiser, the history, the per-grade accuracies and the best
state; every random draw is re-derived from (seed, grade) or (seed, epoch), so a resumed run
reproduces an uninterrupted one exactly.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn

from kdlab.config.schema import TrainSpec
from kdlab.data.base import DataBundle, Split
from kdlab.engine.checkpoint import FORMAT, load_model_state, read_checkpoint, save_atomic
from kdlab.engine.loader import TensorLoader
from kdlab.engine.optim import build_optimizer, lr_factor, set_lr
from kdlab.engine.seeding import derive, generator
from kdlab.engine.trainer import count_params
from kdlab.errors import KdlabError
from kdlab.pipelines.education.growth import GradeModel, check_grade_stages, check_staged, column_index, default_grade_stages
from kdlab.pipelines.education.group_teachers import GroupTeacher
from kdlab.pipelines.education.loss import education_loss
from kdlab.pipelines.education.params import EducationParams


@dataclass
class GradePlan:
    groups: list[list[int]]  # class ids of each group
    seen: list[list[int]]  # indices of the groups taught in each grade (cumulative)
    starts: list[int]  # first epoch of each grade
    stages: list[int]  # body stages in use in each grade
    epochs: int

    def grade_of(self, epoch: int) -> int:
        return max(g for g, s in enumerate(self.starts) if s <= epoch)

    def columns(self, g: int, num_classes: int) -> list[int]:
        if g == len(self.starts) - 1:
            return list(range(num_classes))  # the student's own head: class-id order
        return [c for k in self.seen[g] for c in self.groups[k]]


def plan_grades(p: EducationParams, groups: list[list[int]], body_stages: int, epochs: int) -> GradePlan:
    n = p.num_grades
    new = p.grade_groups or [1] * n
    seen, total = [], 0
    for m in new:
        total += m
        seen.append(list(range(total)))
    starts = p.grade_epochs or [round(epochs * g / n) for g in range(n)]
    if starts[-1] >= epochs:
        raise KdlabError(f"grade_epochs {starts}: the last grade must start before train.epochs={epochs}")
    if len(set(starts)) != n:
        raise KdlabError(f"{n} grades do not fit in train.epochs={epochs}; give more epochs or fewer groups")
    stages = p.grade_stages or default_grade_stages(body_stages, n)
    check_grade_stages(stages, body_stages)
    return GradePlan(groups, seen, list(starts), list(stages), epochs)


@dataclass
class EducationRun:
    history: list[dict]
    summary: dict[str, Any]
    # per grade: {group index: test accuracy on that group (%) at the end of the grade}
    grade_accuracy: list[dict[int, float]] = field(default_factory=list)
    best_state: Optional[dict[str, Tensor]] = None
    stopped_after: Optional[int] = None  # set when `stop_after_epoch` ended the loop early (0-based epoch)


def group_accuracy(model: GradeModel, split: Split, lut: Tensor, groups: list[list[int]], seen: Sequence[int],
                   prepare, batch_size: int) -> dict[str, float]:
    """Accuracy (%) over the seen classes' samples and on each seen group, in eval mode;
    the prediction ranges over every class seen so far."""
    gid = torch.full_like(lut, -1)
    for k in seen:
        gid[torch.as_tensor(groups[k], device=lut.device)] = k
    correct = torch.zeros(len(groups), device=lut.device)
    count = torch.zeros(len(groups), device=lut.device)
    was = model.training
    model.eval()
    with torch.inference_mode():
        for batch in TensorLoader(split, batch_size, prepare=prepare):
            g = gid[batch["y"]]
            keep = g >= 0
            if not bool(keep.any()):
                continue
            pred = model(batch["x"][keep]).argmax(1)
            hit = (pred == lut[batch["y"][keep]]).float()
            correct.index_add_(0, g[keep], hit)
            count.index_add_(0, g[keep], torch.ones_like(hit))
    model.train(was)
    out = {"top1": 100.0 * float(correct.sum() / count.sum().clamp(min=1))}
    for k in seen:
        out[f"group{k + 1}"] = 100.0 * float(correct[k] / count[k].clamp(min=1))
    return out


def _carry_state(old: torch.optim.Optimizer, new: torch.optim.Optimizer) -> None:
    for group in new.param_groups:
        for p in group["params"]:
            if p in old.state:
                new.state[p] = old.state[p]


def train_education(
    *,
    student: nn.Module,
    data: DataBundle,
    plan: GradePlan,
    teachers: list[GroupTeacher],
    params: EducationParams,
    train: TrainSpec,
    batch_size: int,
    eval_batch_size: int,
    seed: int,
    device: torch.device,
    progress=None,
    label: str = "education",
    log_metrics=None,
    run=None,
    arch: Optional[dict] = None,
    resume_from: Optional[str] = None,
    stop_after_epoch: Optional[int] = None,
) -> EducationRun:
    """`run` (a store run) gets `last.pt` at every epoch end; `resume_from` continues from such a
    file; `stop_after_epoch` (1-based, as `--stop-after-epoch`) ends the loop early."""
    check_staged(student)
    student.to(device)
    n_cls = data.num_classes
    last_grade = len(plan.starts) - 1
    group_train = [data.train.subset((column_index(g, n_cls, device)[data.train["y"]] >= 0).nonzero().squeeze(1))
                   for g in plan.groups]
    for k, s in enumerate(group_train):
        if len(s) == 0:
            raise KdlabError(f"group {k + 1} (classes {plan.groups[k]}) has no training samples")
    sample = data.prepare(data.train["x"][:2]) if data.prepare else data.train["x"][:2]
    loaders = [TensorLoader(s, batch_size, shuffle=True, seed=derive(seed, 7, k), prepare=data.prepare,
                            augment=data.augment) for k, s in enumerate(group_train)]
    steps_of = [sum(len(loaders[k]) for k in plan.seen[plan.grade_of(e)]) for e in range(plan.epochs)]

    history: list[dict] = []
    grade_acc: list[dict[int, float]] = []
    best_val, best_state, best_epoch = None, None, None
    model: Optional[GradeModel] = None
    opt = None
    grade = -1
    lut: Optional[Tensor] = None
    slices: dict[int, Tensor] = {}

    def enter_grade(g: int) -> None:
        nonlocal grade, model, opt, lut, slices
        grade = g
        columns = plan.columns(g, n_cls)
        torch.manual_seed(derive(seed, g, 5))  # the TR head's init depends on (seed, grade) only
        model = GradeModel(student, plan.stages[g], columns, g == last_grade, sample).to(device)
        new_opt = build_optimizer(model.trainable(), train.optimizer)
        if opt is not None and params.keep_optimizer:
            _carry_state(opt, new_opt)
        opt = new_opt
        lut = column_index(columns, n_cls, device)
        slices = {k: lut[torch.as_tensor(plan.groups[k], device=device)] for k in plan.seen[g]}

    start = 0
    if resume_from:
        ck = read_checkpoint(resume_from)
        if "grade_model" not in ck:
            raise KdlabError(f"checkpoint '{resume_from}' is not an education-distillation checkpoint; "
                             "run without --resume to start afresh")
        # The grade structure (stages in use, TR head, optimiser over its parameters) of the
        # checkpoint's epoch, then its state; the loop moves on to the next grade as usual.
        enter_grade(plan.grade_of(ck["epoch"]))
        load_model_state(model, ck["grade_model"], resume_from, label)
        opt.load_state_dict(ck["optimizer"])
        history, start = ck["history"], ck["epoch"] + 1
        grade_acc = [{int(k): v for k, v in a.items()} for a in ck["grade_accuracy"]]
        best_val, best_epoch = ck["best_val"], ck["best_epoch"]
        best_state = ck["best_model"] or None
        if run is not None:
            run.rewrite_metrics(history)

    last_epoch = min(plan.epochs, stop_after_epoch) if stop_after_epoch else plan.epochs
    bar = progress.task(label, total=sum(steps_of[start:last_epoch])) if progress else None
    for epoch in range(start, last_epoch):
        t0 = time.perf_counter()
        g = plan.grade_of(epoch)
        if g != grade:
            enter_grade(g)
        torch.manual_seed(derive(seed, epoch, 3))
        seen = plan.seen[g]
        for k in seen:
            loaders[k].set_epoch(epoch)
        if params.replay == "sequential":
            tags = [k for k in seen for _ in range(len(loaders[k]))]
        else:
            pool = torch.as_tensor([k for k in seen for _ in range(len(loaders[k]))])
            tags = pool[torch.randperm(len(pool), generator=generator(derive(seed, epoch, 4)))].tolist()
        its = {k: iter(loaders[k]) for k in seen}
        steps = len(tags)
        model.set_mode(True)
        sums: dict[str, Tensor] = {}
        for step, k in enumerate(tags):
            batch = next(its[k])
            set_lr(opt, train.optimizer.lr, lr_factor(train.schedule, epoch + step / steps, plan.epochs))
            t_logits = teachers[k](batch["x"])
            z = model(batch["x"])
            loss, terms = education_loss(z, lut[batch["y"]], slices[k], t_logits, params.alpha, params.tau)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if train.grad_clip:
                nn.utils.clip_grad_norm_(model.trainable(), train.grad_clip)
            opt.step()
            terms["total"] = loss.detach()
            for name, v in terms.items():  # summed on the device, read once per epoch
                sums[name] = sums[name] + v.detach() if name in sums else v.detach()
            if bar is not None:
                bar.advance(1)
        sums = {n: float(v) for n, v in sums.items()}
        if not math.isfinite(sums.get("total", 0.0)):
            raise KdlabError(f"{label}: the loss became non-finite in epoch {epoch + 1} (grade {g + 1}); "
                             "lower train.optimizer.lr or set train.grad_clip")
        val = group_accuracy(model, data.val, lut, plan.groups, seen, data.prepare, eval_batch_size)
        test = group_accuracy(model, data.test, lut, plan.groups, seen, data.prepare, eval_batch_size)
        record = {"epoch": epoch, "grade": g + 1, "lr": opt.param_groups[0]["lr"], "time": time.perf_counter() - t0,
                  **{f"train_{n}": v / max(steps, 1) for n, v in sums.items()},
                  **{f"val_{n}": v for n, v in val.items()}, **{f"test_{n}": v for n, v in test.items()}}
        history.append(record)
        if log_metrics is not None:
            log_metrics(record)
        # Model selection as in the reference: best accuracy over all classes, in the last grade.
        if g == last_grade and (best_val is None or val["top1"] > best_val):
            best_val, best_epoch = val["top1"], epoch
            best_state = {n: v.detach().clone() for n, v in student.state_dict().items()}
        if epoch + 1 == plan.epochs or plan.grade_of(epoch + 1) != g:
            grade_acc.append({k: test[f"group{k + 1}"] for k in seen})
        if run is not None:
            save_atomic({"format": FORMAT, "arch": arch or {}, "epoch": epoch, "model": student.state_dict(),
                         "best": {"epoch": best_epoch, "val_top1": best_val} if best_epoch is not None else {},
                         "grade_model": model.state_dict(), "optimizer": opt.state_dict(), "history": history,
                         "grade_accuracy": [{str(k): v for k, v in a.items()} for a in grade_acc],
                         "best_val": best_val, "best_epoch": best_epoch, "best_model": best_state or {}},
                        run.ckpt("last"))
        if bar is not None:
            bar.update(description=f"{label} grade {g + 1} ep {epoch + 1}/{plan.epochs} top1 {val['top1']:.2f}")
    if bar is not None:
        bar.done()
    if last_epoch < plan.epochs:
        return EducationRun(history, {"interrupted_after_epoch": last_epoch - 1}, grade_acc, best_state,
                            stopped_after=last_epoch - 1)
    model.eval()
    summary = {"epochs": plan.epochs, "params": count_params(student),
               "val_top1": history[-1]["val_top1"], "test_top1": history[-1]["test_top1"]}
    if best_state is not None:
        last_state = {n: v.clone() for n, v in student.state_dict().items()}
        student.load_state_dict(best_state)
        best_test = group_accuracy(model, data.test, lut, plan.groups, plan.seen[last_grade], data.prepare, eval_batch_size)
        student.load_state_dict(last_state)
        summary.update(best_test_top1=best_test["top1"], best_epoch=best_epoch, best_val_top1=best_val)
    summary["grade_accuracy"] = [{str(k + 1): v for k, v in a.items()} for a in grade_acc]
    summary["mean_epoch_time"] = sum(h["time"] for h in history) / len(history)
    return EducationRun(history, summary, grade_acc, best_state)
