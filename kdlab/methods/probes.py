"""Instruments as methods: add them to any config's `methods` to measure a run. They add no
loss term. What they measure goes into the run's summary (`summary_stats()`, read by the
trainer at the end of training) and stays readable on the method object for pipelines.

- record_w:      per-example gradient-rescaling weight w and teacher confidence q_t
- geometry:      the student's class-similarity matrix and its geometry score
- teacher_check: teacher confidence, wrong-class entropy/uniformity, ECE and warnings
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdlab.errors import KdlabError
from kdlab.knowledge.instruments import (
    binned_means,
    diagnose_teacher,
    geometry_reference,
    geometry_score,
    model_class_similarity,
    spearman,
)
from kdlab.methods.base import Method, MethodContext, MethodParams, Needs, one_teacher, register_method


@register_method(
    "record_w",
    "instrument (no loss): records each example's gradient-rescaling weight w (true-logit gradient "
    "of the whole objective / that of plain CE) and the teacher's q_t",
    "Tang et al. 2020, arXiv:2002.03532",
)
class RecordW(Method):
    """w is measured, not computed from a formula: a hook on the student's logits reads the
    gradient of the full weighted objective on the true logit, g_t, and divides it by plain CE's
    (p_t - 1)/B. For (1-λ)·CE + λ·KD at τ = 1 this equals 1 - λ(1 - q_t)/(1 - p_t).
    Per example it keeps the mean of w over training (visits where 1 - p_t < min_gap are skipped:
    the ratio is ill-conditioned there), the last w and p_t, and the teacher's q_t (τ = 1)."""

    uses_teacher = True

    class Params(MethodParams):
        min_gap: float = Field(1e-3, gt=0, lt=1)

    def __init__(self, params, ctx: MethodContext):
        super().__init__(params, ctx)
        n = ctx.train_size
        for name in ("w_sum", "w_count", "w_last", "p_last", "q_t"):
            self.register_buffer(name, torch.zeros(n, dtype=torch.float64))
        self.q_t.fill_(float("nan"))
        self.w_last.fill_(float("nan"))
        self.epoch_stats: list[dict] = []

    def forward(self, batch, student, teachers):
        logits = student.logits
        if not logits.requires_grad:
            return {}
        t_logits = one_teacher(teachers, self.name).logits
        if t_logits is None:
            raise KdlabError("record_w needs teacher logits")
        idx, y = batch["index"], batch["y"]
        with torch.no_grad():
            q_t = F.softmax(t_logits.float(), 1).gather(1, y[:, None]).squeeze(1)
            p_t = F.softmax(logits.detach().float(), 1).gather(1, y[:, None]).squeeze(1)
            self.q_t[idx] = q_t.double()
            self.p_last[idx] = p_t.double()
        gap = (1 - p_t).double()
        n = logits.shape[0]
        min_gap = self.params.min_gap

        def hook(grad: Tensor) -> None:
            # Every loss is a batch mean, so plain CE's true-logit gradient is (p_t - 1)/n.
            g_t = grad.detach().double().gather(1, y[:, None]).squeeze(1)
            w = g_t * n / -gap
            ok = gap >= min_gap
            self.w_last[idx] = torch.where(ok, w, torch.full_like(w, float("nan")))
            self.w_sum.index_add_(0, idx[ok], w[ok])
            self.w_count.index_add_(0, idx[ok], torch.ones_like(w[ok]))

        logits.register_hook(hook)
        return {}

    def on_epoch_end(self, epoch: int) -> None:
        w, q = self.last_arrays()
        ok = ~np.isnan(w)
        self.epoch_stats.append({"epoch": epoch, "w_mean": float(np.mean(w[ok])) if ok.any() else float("nan"),
                                 "w_q_spearman": spearman(w[ok], q[ok])})

    def mean_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean w over training, q_t) for the examples with at least one valid visit."""
        cnt = self.w_count.cpu().numpy()
        ok = cnt > 0
        return (self.w_sum.cpu().numpy()[ok] / cnt[ok]), self.q_t.cpu().numpy()[ok]

    def last_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return self.w_last.cpu().numpy(), self.q_t.cpu().numpy()

    def summary_stats(self) -> dict:
        w, q = self.mean_arrays()
        if len(w) == 0:
            return {}
        bins = binned_means(q, w, 5)
        return {
            "w_mean": float(w.mean()),
            "w_std": float(w.std()),
            "w_q_spearman": spearman(w, q),
            "w_low_q_bin": bins[0][1] if bins else float("nan"),
            "w_high_q_bin": bins[-1][1] if bins else float("nan"),
            "w_teacher_mean_q_t": float(np.nanmean(self.q_t.cpu().numpy())),
        }


@register_method(
    "geometry",
    "instrument (no loss): the student's class-similarity matrix and its correlation with the "
    "superclass structure (or the teacher's class similarities)",
    "Tang et al. 2020, arXiv:2002.03532",
)
class Geometry(Method):
    uses_teacher = False

    def __init__(self, params, ctx: MethodContext):
        super().__init__(params, ctx)
        # Plain list: the models must not become submodules of the method.
        self._ctx = [ctx]
        if not getattr(ctx.data, "superclass", None) and not ctx.teachers:
            # A `teacher:` section alone is not enough: teachers are only built for runs with a
            # method that learns from one (geometry itself does not).
            raise KdlabError(
                "geometry: the data has no superclasses, so the score needs a teacher's class similarities, "
                "but this run has none: add a `teacher:` section and a method that uses it (e.g. kd)"
            )

    def forward(self, batch, student, teachers):
        return {}

    def measure(self) -> tuple[float, torch.Tensor, str]:
        ctx = self._ctx[0]
        ref, what = geometry_reference(ctx.data, ctx.teachers[0] if ctx.teachers else None)
        sim = model_class_similarity(ctx.student, ctx.data)
        return geometry_score(sim, ref), sim, what

    def summary_stats(self) -> dict:
        score, _, what = self.measure()
        return {"geometry_score": score, "geometry_reference": what}


@register_method(
    "teacher_check",
    "instrument (no loss): teacher confidence and wrong-class entropy on the training set, ECE, "
    "and warnings (over-confident teacher, near-uniform wrong-class mass)",
    "Tang et al. 2020, arXiv:2002.03532",
)
class TeacherCheck(Method):
    uses_teacher = True

    class Params(MethodParams):
        tau: float = Field(1.0, gt=0)  # only used to phrase the advice ("try tau > ...")

    def __init__(self, params, ctx: MethodContext):
        super().__init__(params, ctx)
        if not ctx.teachers:
            raise KdlabError("teacher_check needs a teacher: add a `teacher:` section")
        self._ctx = [ctx]
        self.report = None

    def forward(self, batch, student, teachers):
        return {}

    def build(self, student, teachers) -> None:
        ctx = self._ctx[0]
        self.report = diagnose_teacher(ctx.teachers[0], ctx.data, self.params.tau)

    def summary_stats(self) -> dict:
        if self.report is None:
            return {}
        return {f"teacher_{k}": v for k, v in self.report.numbers().items()}
