"""The training loop. Every method, baseline and recipe trains through `Trainer.fit`:
train (set up or resume, then epochs) -> epoch (batches, then validation, best model and
checkpoints) -> step (teachers, student and methods, one optimiser step).

What changes between recipes (which module trains, on which batches, taught by whom) is a
`Curriculum`; where epochs and checkpoints are kept is a `Recorder` (the run store's, given
by the stage). The engine itself writes nothing.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

import torch
from torch import Tensor, nn

from kdlab.config.schema import TrainSpec
from kdlab.data.base import DataBundle
from kdlab.engine import distributed as D
from kdlab.engine.checkpoint import FORMAT, load_model_state, read_resumable
from kdlab.engine.curriculum import Curriculum
from kdlab.engine.evaluation import evaluate
from kdlab.engine.fast_step import (amp_enabled, channels_last, channels_last_batch, check_compile, compile_in_place,
                                    compiled, is_convolutional)
from kdlab.engine.loader import TensorLoader, make_loader
from kdlab.engine.module import DistillModule, teacher_outputs
from kdlab.engine.optim import build_optimizer, lr_factor, set_lr
from kdlab.errors import KdlabError
from kdlab.knowledge.outputs import Outputs
from kdlab.knowledge.taps import FeatureTap
from kdlab.methods.base import Method
from kdlab.models.build import count_params
from kdlab.seeding import derive, seed_everything
from kdlab.tasks.base import Task


class NonFiniteLoss(KdlabError):
    pass


class Recorder(Protocol):
    """Where a run's epochs and checkpoints go (the run store's, on the main rank only)."""

    def log(self, record: dict) -> None: ...
    def rewrite(self, history: list[dict]) -> None: ...
    def save(self, name: str, obj: dict) -> None: ...
    def where(self, name: str) -> str: ...


@dataclass
class TrainSetup:
    """Everything one training run is made of."""

    student: nn.Module
    data: DataBundle
    task: Task
    train: TrainSpec
    seed: int
    device: torch.device
    batch_size: int
    eval_batch_size: int = 1024
    methods: list[Method] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    teachers: list[nn.Module] = field(default_factory=list)
    label: str = "student"
    arch: dict = field(default_factory=dict)
    # Per teacher, None or an object answering `teacher_outputs(batch)` for the batches it
    # `holds` (a teacher-output cache) instead of the teacher's forward pass.
    teacher_caches: list[Any] = field(default_factory=list)
    # Stored augmented views handed to the student instead of online augmentation (TensorLoader).
    views: Optional[Any] = None


@dataclass
class TrainResult:
    history: list[dict]
    summary: dict[str, Any]
    student: nn.Module
    methods: list[Method] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return "interrupted_after_epoch" not in self.summary


class Trainer:
    def __init__(self, setup: TrainSetup, curriculum: Optional[Curriculum] = None,
                 recorder: Optional[Recorder] = None, progress=None):
        s = self.setup = setup
        self.device, self.task, self.data, self.spec = s.device, s.task, s.data, s.train
        self.student = s.student.to(s.device)
        self.methods = s.methods
        self.teachers = [t.to(s.device).eval().requires_grad_(False) for t in s.teachers]
        self.curriculum = curriculum or Curriculum()
        self.recorder = recorder
        self.progress = progress
        self.env = D.current()
        self.amp_on, why_not = amp_enabled(s.train.amp, s.train.amp_dtype, s.device)
        if why_not:
            warnings.warn(why_not, stacklevel=2)
        if s.train.channels_last:
            self.teachers = [channels_last(t) for t in self.teachers]
        if s.train.compile:
            check_compile(s.device)
        # What runs the teachers' forward: compiled wrappers with train.compile (the modules
        # themselves keep their names, for the feature taps, and are not changed).
        self.teacher_calls = [compiled(t) for t in self.teachers] if s.train.compile else self.teachers
        self.amp_dtype = torch.bfloat16 if s.train.amp_dtype == "bf16" else torch.float16
        # Always present, a no-op unless fp16 needs loss scaling; its state is checkpointed.
        self.scaler = torch.amp.GradScaler(s.device.type, enabled=self.amp_on and self.amp_dtype == torch.float16)

    # ----------------------------------------------------------------- train
    def fit(self, resume_from: Optional[str] = None, stop_after_epoch: Optional[int] = None) -> TrainResult:
        """Train from scratch, or continue from a `last` checkpoint, up to the last epoch (or
        `stop_after_epoch`, 1-based); a finished checkpoint restores without training."""
        self._set_up()
        start = self._resume(resume_from) if resume_from else 0
        epochs = self.spec.epochs
        last = min(epochs, stop_after_epoch) if stop_after_epoch else epochs
        self.stop_epoch = last - 1  # a stop asked for writes its checkpoint, whatever checkpoint_every says
        total = sum(self.curriculum.steps(e) for e in range(start, last))
        self.bar = self.progress.task(self.setup.label, total=total) if self.progress and total else None
        try:
            for epoch in range(start, last):
                self.history.append(self.epoch(epoch))
        finally:
            if self.bar is not None:
                self.bar.done()
            for tap in [self.distill_module.tap, *self.teacher_taps]:
                if tap is not None:
                    tap.remove()
        done = len(self.history) == epochs
        summary = self._summary() if done else {"interrupted_after_epoch": last - 1}
        return TrainResult(self.history, summary, self.student, self.methods)

    def _set_up(self) -> None:
        seed_everything(self.setup.seed)
        s = self.setup
        self.distill_module = DistillModule(self.student, self.methods, s.weights, self.task).to(self.device)
        needs = [m.needs() for m in self.methods]
        s_layers = sorted({l for n in needs for l in n.student_layers})
        t_layers = sorted({l for n in needs for l in n.teacher_layers})
        self.distill_module.tap = FeatureTap(self.student, s_layers, "student") if s_layers else None
        self.teacher_taps = [FeatureTap(t, t_layers, f"teacher {i}") if t_layers else None
                             for i, t in enumerate(self.teachers)]
        self.train_loader = self.loader(self.data.train, shuffle=True, augment=True)
        self.curriculum.attach(self)
        if self.methods:
            self._build_methods()
        self.module: Optional[nn.Module] = None
        self.opt: Optional[torch.optim.Optimizer] = None
        self.history: list[dict] = []
        self.best: dict[str, Any] = {}
        self.best_state: dict[str, Tensor] = {}

    def _build_methods(self) -> None:
        """One no-grad pass on the first batch lets methods size their projectors."""
        first = next(iter(self.loader(self.data.train, shuffle=False, augment=False)))
        self.student.eval()
        with torch.no_grad():
            t_out = self.teacher_outputs(first)
            s_out = self.distill_module.student_outputs(first)
            for m in self.methods:
                m.build(s_out, t_out)
        self.student.train()
        self.distill_module.to(self.device)

    def _resume(self, path: str) -> int:
        ck = read_resumable(path)
        self.curriculum.load_state_dict(ck.get("curriculum", {}))
        self._enter(ck["epoch"])
        load_model_state(self.module, ck["module"], path, self.setup.label)
        self.opt.load_state_dict(ck["optimizer"])
        if ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        self.history, self.best, self.best_state = ck["history"], ck["best"], ck["best_model"]
        if self.recorder is not None:
            self.recorder.rewrite(self.history)
        return ck["epoch"] + 1

    def _enter(self, epoch: int) -> None:
        """The module, optimiser and DDP wrapper of this epoch (new ones when the curriculum
        changes the module, e.g. when the student grows)."""
        module = self.curriculum.module(epoch)
        if module is self.module:
            return
        old = self.opt
        self.module = module.to(self.device)
        self.nhwc = self.spec.channels_last and is_convolutional(self.module)  # images made NHWC in the step
        if self.nhwc:
            channels_last(self.module)
        if self.spec.compile:  # in place and inside DDP: see kdlab.engine.fast_step
            compile_in_place(self.module)
        self.wrapped = self.module
        if self.env.active:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.wrapped = nn.parallel.DistributedDataParallel(
                self.module, device_ids=ids, find_unused_parameters=self.curriculum.find_unused_parameters)
        self.opt = build_optimizer(self.curriculum.parameters(self.module), self.spec.optimizer)
        if old is not None and self.curriculum.keep_optimizer_state:
            for group in self.opt.param_groups:
                for p in group["params"]:
                    if p in old.state:
                        self.opt.state[p] = old.state[p]

    # ----------------------------------------------------------------- epoch
    def epoch(self, epoch: int) -> dict[str, Any]:
        self._enter(epoch)  # before the clock: building an optimiser is set-up, not training time
        t0 = time.perf_counter()
        torch.manual_seed(derive(self.setup.seed, epoch, 3))  # dropout etc.: same draws after resume
        for m in self.methods:
            m.on_epoch_start(epoch)
        batches = self.curriculum.batches(epoch)
        steps = len(batches)
        self.wrapped.train()
        self.curriculum.set_train_mode(self.module)
        sums: dict[str, Tensor] = {}
        for step, batch in enumerate(batches):
            terms = self.step(batch, epoch + step / steps)
            for k, v in terms.items():  # summed on the device, read once per epoch
                sums[k] = sums[k] + v.float() if k in sums else v.float()
            if step % 50 == 49 and not bool(torch.isfinite(sums["total"])):  # a host sync every 50 steps
                self._non_finite(epoch, step, sums)
            if self.bar is not None:
                self.bar.advance(1)
        for m in self.methods:
            m.on_epoch_end(epoch)
        train_time = time.perf_counter() - t0
        train_terms = self._reduce(epoch, sums, steps)
        # Non-loss statistics a method measured during the epoch (e.g. an inconsistency rate).
        method_metrics = {k: v for m in self.methods for k, v in m.epoch_metrics().items()}
        val = self.curriculum.validate(epoch) if self._due(epoch, self.spec.eval_every) else {}
        record = {
            "epoch": epoch,
            "lr": self.opt.param_groups[0]["lr"],
            "time": time.perf_counter() - t0,
            "train_time": train_time,
            **{f"train_{k}": v for k, v in train_terms.items()},
            **{f"train_{k}": v for k, v in method_metrics.items()},
            **{f"val_{k}": v for k, v in val.items()},
            **self.curriculum.epoch_fields(epoch),
        }
        self._keep(epoch, val, record)
        if self.bar is not None:
            metric = self.task.primary_metric
            score = f" val {metric} {val[metric]:.2f}" if metric in val else ""
            self.bar.update(description=f"{self.setup.label} ep {epoch + 1}/{self.spec.epochs}{score}")
        return record

    def _reduce(self, epoch: int, sums: dict[str, Tensor], steps: int) -> dict[str, float]:
        sums["n"] = torch.tensor(float(steps), device=self.device)
        totals = D.all_reduce_sums(sums)
        if not math.isfinite(totals["total"]):
            self._non_finite(epoch, steps - 1, sums)
        n = totals.pop("n")  # n counts steps on every rank
        return {k: v / n for k, v in totals.items()}

    def _keep(self, epoch: int, val: dict[str, float], record: dict) -> None:
        """Best model by validation score, then the epoch's checkpoints and metrics line."""
        metric = self.task.primary_metric
        score = val.get(metric)
        history = [*self.history, record]
        if score is not None and self.curriculum.selectable(epoch) and self.task.better(score, self.best.get(f"val_{metric}")):
            self.best = {"epoch": epoch, **{f"val_{k}": v for k, v in val.items()}}
            self.best_state = {k: v.detach().clone() for k, v in self.student.state_dict().items()}
            self._save("best", epoch, history, full=False)
        if self._due(epoch, self.spec.checkpoint_every) or epoch == self.stop_epoch:
            self._save("last", epoch, history, full=True)
        if self.recorder is not None:
            self.recorder.log(record)

    def _due(self, epoch: int, every: int) -> bool:
        """Every `every` epochs, and always at the last."""
        return (epoch + 1) % every == 0 or epoch + 1 == self.spec.epochs

    def _save(self, name: str, epoch: int, history: list[dict], full: bool) -> None:
        if self.recorder is None:
            return
        obj = {"format": FORMAT, "arch": self.setup.arch, "epoch": epoch, "model": self.student.state_dict(),
               "best": self.best}
        if full:
            obj.update(module=self.module.state_dict(), optimizer=self.opt.state_dict(),
                       scaler=self.scaler.state_dict(), history=history, best_model=self.best_state,
                       curriculum=self.curriculum.state_dict())
        self.recorder.save(name, obj)

    # ------------------------------------------------------------------ step
    def step(self, batch: dict[str, Tensor], t: float) -> dict[str, Tensor]:
        """One optimiser step at fractional epoch t; returns the detached loss terms."""
        set_lr(self.opt, self.spec.optimizer.lr, lr_factor(self.spec.schedule, t, self.spec.epochs))
        for m in self.methods:
            batch = m.transform_batch(batch)
        if self.nhwc:
            batch = channels_last_batch(batch)
        teachers = self.curriculum.teacher_outputs(batch)
        with self.autocast():
            total, terms = self.wrapped(batch, teachers)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.spec.grad_clip:
            self.scaler.unscale_(self.opt)
            nn.utils.clip_grad_norm_(self.curriculum.parameters(self.module), self.spec.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        terms["total"] = total.detach()
        return terms

    # ------------------------------------------------------- shared helpers
    def autocast(self):
        if not self.amp_on:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def loader(self, split, shuffle: bool, augment: bool, seed: Optional[int] = None) -> TensorLoader:
        views = {"views": self.setup.views} if augment and self.setup.views is not None else {}
        return make_loader(split, self.setup.batch_size, device=self.device, augment_samples=augment, shuffle=shuffle,
                           seed=self.setup.seed if seed is None else seed, prepare=self.data.prepare,
                           augment=self.data.augment if augment else None, rank=self.env.rank, world=self.env.world,
                           **views)

    def teacher_outputs(self, batch: dict[str, Tensor]) -> list[Outputs]:
        caches = self.setup.teacher_caches or [None] * len(self.teachers)
        return [c.teacher_outputs(batch) if c is not None and c.holds(batch)
                else teacher_outputs(self.task, t, tap, batch, self.autocast())
                for t, tap, c in zip(self.teacher_calls, self.teacher_taps, caches)]

    def evaluate(self, model: nn.Module, split) -> dict[str, float]:
        return evaluate(model, split, self.task, self.data.prepare, self.setup.eval_batch_size, self.autocast())

    def _summary(self) -> dict[str, Any]:
        metric = self.task.primary_metric
        out: dict[str, Any] = {"epochs": len(self.history), "params": count_params(self.student)}
        out.update({k: v for k, v in self.history[-1].items() if k.startswith("val_")})
        out.update({f"test_{k}": v for k, v in self.evaluate(self.student, self.data.test).items()})
        if self.best:
            # Test score of the best-on-validation epoch (its weights were kept in memory).
            state = {k: v.clone() for k, v in self.student.state_dict().items()}
            self.student.load_state_dict(self.best_state)
            test_best = self.evaluate(self.student, self.data.test)
            self.student.load_state_dict(state)
            out.update({f"best_test_{k}": v for k, v in test_best.items()})
            out["best_epoch"] = self.best["epoch"]
            out[f"best_val_{metric}"] = self.best.get(f"val_{metric}")
        out["mean_epoch_time"] = sum(h["time"] for h in self.history) / len(self.history)
        for m in self.methods:  # instruments (record_w, geometry, teacher_check) report here
            out.update(m.summary_stats())
        out.update(self.curriculum.summary())
        return out

    def _non_finite(self, epoch: int, step: int, sums: dict[str, Tensor]) -> None:
        bad = [k for k, v in sums.items() if not bool(torch.isfinite(v))]
        kept = f" The last good checkpoint is kept at {self.recorder.where('last')}." if self.recorder and epoch > 0 else ""
        raise NonFiniteLoss(
            f"{self.setup.label}: the loss became non-finite in epoch {epoch + 1} (by step {step + 1}; terms: "
            f"{', '.join(bad)}).{kept} Lower train.optimizer.lr or set train.grad_clip."
        )
