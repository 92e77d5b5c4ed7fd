"""The training loop. Every method, baseline and pipeline stage runs through `Trainer.fit`.

Per step: the batch is cut on-device; each teacher runs in eval + inference mode; the
student and the methods' own parts run in one module (wrapped in DDP when distributed)
that returns the weighted total and the named terms; one backward, optional clipping,
one optimiser step. Term sums stay on the device and are read once per epoch.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor, nn

from kdlab.config.schema import TrainSpec
from kdlab.data.base import DataBundle
from kdlab.engine import distributed as D
from kdlab.engine.evaluation import evaluate
from kdlab.engine.checkpoint import FORMAT, load_model_state, read_checkpoint, save_atomic
from kdlab.engine.loader import TensorLoader
from kdlab.engine.optim import build_optimizer, lr_factor, set_lr
from kdlab.engine.seeding import derive, seed_everything
from kdlab.errors import KdlabError
from kdlab.knowledge.taps import FeatureTap
from kdlab.methods.base import Method, Outputs
from kdlab.tasks.base import Task


class NonFiniteLoss(KdlabError):
    pass


class DistillModule(nn.Module):
    """The student and the methods' trainable parts: what the optimiser and DDP see."""

    def __init__(self, student: nn.Module, methods: list[Method], weights: list[float], task: Task):
        super().__init__()
        self.student = student
        self.methods = nn.ModuleList(methods)
        self.weights = list(weights)
        self.task = task
        self.tap: Optional[FeatureTap] = None

    def student_outputs(self, batch: dict[str, Tensor]) -> Outputs:
        out = self.task.forward(self.student, batch)
        if isinstance(out, Outputs):
            out.features.update(self.tap.pop() if self.tap else {})
            return out
        return Outputs(logits=out, features=self.tap.pop() if self.tap else {})

    def forward(self, batch: dict[str, Tensor], teachers: list[Outputs]):
        s_out = self.student_outputs(batch)
        total: Tensor | float = 0.0
        terms: dict[str, Tensor] = {}
        for i, (m, w) in enumerate(zip(self.methods, self.weights)):
            for k, v in m(batch, s_out, teachers).items():
                key = k if k not in terms else f"{m.name}{i}.{k}"
                terms[key] = v.detach()
                total = total + w * v
        return total, terms


@dataclass
class TrainResult:
    history: list[dict]
    summary: dict[str, Any]
    student: nn.Module
    methods: list[Method] = field(default_factory=list)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class Trainer:
    def __init__(
        self,
        *,
        student: nn.Module,
        methods: list[Method],
        weights: list[float],
        teachers: list[nn.Module],
        data: DataBundle,
        task: Task,
        train: TrainSpec,
        batch_size: int,
        eval_batch_size: int,
        seed: int,
        device: torch.device,
        run=None,
        arch: Optional[dict] = None,
        progress=None,
        label: str = "student",
    ):
        self.student = student.to(device)
        self.methods = methods
        self.weights = weights
        self.teachers = [t.to(device).eval() for t in teachers]
        for t in self.teachers:
            t.requires_grad_(False)
        self.data = data
        self.task = task
        self.spec = train
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.device = device
        self.run = run
        self.arch = arch or {}
        self.progress = progress
        self.label = label
        self.env = D.current()
        amp_on = train.amp and device.type == "cuda"
        if train.amp and not amp_on:
            import warnings

            warnings.warn("train.amp is for CUDA; running in float32 on the CPU", stacklevel=2)
        self.amp_dtype = torch.bfloat16 if train.amp_dtype == "bf16" else torch.float16
        self.amp_on = amp_on
        self.scaler = torch.amp.GradScaler("cuda") if amp_on and self.amp_dtype == torch.float16 else None

    # ----------------------------------------------------------------- set-up
    def _autocast(self):
        if not self.amp_on:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _make_taps(self) -> None:
        s_layers = sorted({l for m in self.methods for l in m.needs().student_layers})
        t_layers = sorted({l for m in self.methods for l in m.needs().teacher_layers})
        self.module.tap = FeatureTap(self.student, s_layers, "student") if s_layers else None
        self.teacher_taps = [FeatureTap(t, t_layers, f"teacher {i}") if t_layers else None for i, t in enumerate(self.teachers)]

    def teacher_outputs(self, batch: dict[str, Tensor]) -> list[Outputs]:
        outs = []
        for t, tap in zip(self.teachers, self.teacher_taps):
            with torch.inference_mode(), self._autocast():
                o = self.task.forward(t, batch)
                feats = tap.pop() if tap else {}
            if isinstance(o, Outputs):
                feats = {**o.features, **feats}
                extras = {k: (v.clone() if isinstance(v, Tensor) else v) for k, v in o.extras.items()}
                o = o.logits
            else:
                extras = {}
            # Inference tensors cannot enter autograd graphs: clone them outside the mode.
            outs.append(
                Outputs(
                    logits=o.clone() if o is not None else None,
                    features={k: v.clone() for k, v in feats.items()},
                    extras=extras,
                )
            )
        return outs

    def _build_methods(self) -> None:
        """One no-grad pass on the first batch lets methods size their projectors."""
        first = next(iter(self._loader(self.data.train, self.batch_size, shuffle=False, augment=False)))
        self.student.eval()
        with torch.no_grad():
            t_out = self.teacher_outputs(first)
            s_out = self.module.student_outputs(first)
            for m in self.methods:
                m.build(s_out, t_out)
        self.student.train()
        self.module.to(self.device)

    def _loader(self, split, batch_size, shuffle, augment, world_split=True):
        return TensorLoader(
            split,
            batch_size,
            shuffle=shuffle,
            seed=self.seed,
            prepare=self.data.prepare,
            augment=self.data.augment if augment else None,
            rank=self.env.rank if world_split else 0,
            world=self.env.world if world_split else 1,
        )

    # ------------------------------------------------------------- evaluation
    def evaluate(self, model: nn.Module, split) -> dict[str, float]:
        return evaluate(model, split, self.task, self.data.prepare, self.eval_batch_size, self._autocast())

    # ---------------------------------------------------------------- fitting
    def fit(self, resume_from: Optional[str] = None, stop_after_epoch: Optional[int] = None) -> TrainResult:
        seed_everything(self.seed)
        self.module = DistillModule(self.student, self.methods, self.weights, self.task).to(self.device)
        self._make_taps()
        self._build_methods()
        wrapped: nn.Module = self.module
        if self.env.active:
            ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = nn.parallel.DistributedDataParallel(self.module, device_ids=ids)
        opt = build_optimizer(self.module.parameters(), self.spec.optimizer)
        history: list[dict] = []
        best: dict[str, Any] = {}
        self._best_state: dict[str, Tensor] = {}
        start = 0
        if resume_from:
            ck = read_checkpoint(resume_from)
            load_model_state(self.module, ck["module"], resume_from, self.label)
            opt.load_state_dict(ck["optimizer"])
            history, best, start = ck["history"], ck["best"], ck["epoch"] + 1
            self._best_state = ck["best_model"]
            if self.run is not None and self.env.main:
                self.run.rewrite_metrics(history)

        loader = self._loader(self.data.train, self.batch_size, shuffle=True, augment=True)
        steps = len(loader)
        epochs = self.spec.epochs
        metric = self.task.primary_metric
        last_epoch = min(epochs, stop_after_epoch) if stop_after_epoch else epochs
        bar = self.progress.task(f"{self.label}", total=(last_epoch - start) * steps) if self.progress else None
        for epoch in range(start, last_epoch):
            t0 = time.perf_counter()
            torch.manual_seed(derive(self.seed, epoch, 3))  # dropout etc.: same draws after resume
            loader.set_epoch(epoch)
            for m in self.methods:
                m.on_epoch_start(epoch)
            wrapped.train()
            sums: dict[str, Tensor] = {}
            for step, batch in enumerate(loader):
                set_lr(opt, self.spec.optimizer.lr, lr_factor(self.spec.schedule, epoch + step / steps, epochs))
                for m in self.methods:
                    batch = m.transform_batch(batch)
                teachers = self.teacher_outputs(batch) if self.teachers else []
                with self._autocast():
                    total, terms = wrapped(batch, teachers)
                opt.zero_grad(set_to_none=True)
                if self.scaler is not None:
                    self.scaler.scale(total).backward()
                    self.scaler.unscale_(opt)
                else:
                    total.backward()
                if self.spec.grad_clip:
                    nn.utils.clip_grad_norm_(self.module.parameters(), self.spec.grad_clip)
                if self.scaler is not None:
                    self.scaler.step(opt)
                    self.scaler.update()
                else:
                    opt.step()
                terms["total"] = total.detach()
                for k, v in terms.items():
                    sums[k] = sums[k] + v.float() if k in sums else v.float()
                if step % 50 == 49 and not bool(torch.isfinite(sums["total"])):
                    self._non_finite(epoch, step, sums)
                if bar is not None:
                    bar.advance(1)
            for m in self.methods:
                m.on_epoch_end(epoch)
            # Non-loss statistics a method measured during the epoch (e.g. an inconsistency rate).
            method_metrics = {k: v for m in self.methods for k, v in m.epoch_metrics().items()}
            train_time = time.perf_counter() - t0
            sums["n"] = torch.tensor(float(steps), device=self.device)
            totals = D.all_reduce_sums(sums)
            if not math.isfinite(totals["total"]):
                self._non_finite(epoch, steps - 1, sums)
            n = totals.pop("n")
            train_terms = {k: v / n for k, v in totals.items()}  # n counts steps on every rank
            val = self.evaluate(self.student, self.data.val)
            record = {
                "epoch": epoch,
                "lr": opt.param_groups[0]["lr"],
                "time": time.perf_counter() - t0,
                "train_time": train_time,
                **{f"train_{k}": v for k, v in train_terms.items()},
                **{f"train_{k}": v for k, v in method_metrics.items()},
                **{f"val_{k}": v for k, v in val.items()},
            }
            history.append(record)
            score = val.get(metric)
            if score is not None and self.task.better(score, best.get(f"val_{metric}")):
                best = {"epoch": epoch, **{f"val_{k}": v for k, v in val.items()}}
                self._best_state = {k: v.detach().clone() for k, v in self.student.state_dict().items()}
                self._save("best", epoch, opt, history, best, full=False)
            self._save("last", epoch, opt, history, best, full=True)
            if self.run is not None and self.env.main:
                self.run.log_metrics(record)
            if bar is not None:
                bar.update(description=f"{self.label} ep {epoch + 1}/{epochs} val {metric} {score:.2f}" if score is not None else None)
        if bar is not None:
            bar.done()
        finished = last_epoch == epochs
        summary = self._summary(history, best) if finished else {"interrupted_after_epoch": last_epoch - 1}
        for tap in [self.module.tap, *self.teacher_taps]:
            if tap is not None:
                tap.remove()
        return TrainResult(history, summary, self.student, self.methods)

    def _summary(self, history, best) -> dict[str, Any]:
        metric = self.task.primary_metric
        test_last = self.evaluate(self.student, self.data.test)
        out = {"epochs": len(history), "params": count_params(self.student)}
        out.update({k: v for k, v in history[-1].items() if k.startswith("val_")})
        out.update({f"test_{k}": v for k, v in test_last.items()})
        if best:
            # Test accuracy of the best-on-validation epoch (its weights were kept in memory).
            state = {k: v.clone() for k, v in self.student.state_dict().items()}
            self.student.load_state_dict(self._best_state)
            test_best = self.evaluate(self.student, self.data.test)
            self.student.load_state_dict(state)
            out.update({f"best_test_{k}": v for k, v in test_best.items()})
            out["best_epoch"] = best["epoch"]
            out[f"best_val_{metric}"] = best.get(f"val_{metric}")
        out["mean_epoch_time"] = sum(h["time"] for h in history) / max(len(history), 1)
        for m in self.methods:  # instruments (record_w, geometry, teacher_check) report here
            out.update(m.summary_stats())
        return out

    def _save(self, name, epoch, opt, history, best, full: bool) -> None:
        if self.run is None or not self.env.main:
            return
        obj = {
            "format": FORMAT,
            "arch": self.arch,
            "epoch": epoch,
            "model": self.student.state_dict(),
            "best": best,
        }
        if full:
            obj.update(
                module=self.module.state_dict(),
                optimizer=opt.state_dict(),
                history=history,
                best_model=self._best_state,
            )
        save_atomic(obj, self.run.ckpt(name))

    def _non_finite(self, epoch, step, sums) -> None:
        bad = [k for k, v in sums.items() if not bool(torch.isfinite(v))]
        kept = f" The last good checkpoint is kept at {self.run.ckpt('last')}." if self.run and epoch > 0 else ""
        raise NonFiniteLoss(
            f"{self.label}: the loss became non-finite in epoch {epoch + 1} (by step {step + 1}; terms: "
            f"{', '.join(bad)}).{kept} Lower train.optimizer.lr or set train.grad_clip."
        )
