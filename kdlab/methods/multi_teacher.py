"""Multi-teacher logit distillation: plain averaging (AVER), confidence-aware weights
(CA-MKD) and gradient-space min-norm weights (AE-KD).

All three take any number of teachers whose logits have the student's width.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdlab.methods.base import Method, MethodParams, Needs, register_method
from kdlab.methods.logit_utils import softened_kl_per_sample, teacher_logits


class _MultiTeacher(Method):
    def needs(self) -> Needs:
        return Needs(max_teachers=None)


def average_distribution(teacher_logits: list[Tensor], tau: float) -> Tensor:
    """Mean of the teachers' softened distributions (shape [B, C])."""
    return torch.stack([(t / tau).softmax(-1) for t in teacher_logits]).mean(0)


@register_method(
    "avg",
    "multi-teacher KD to the average of the teachers' softened distributions (AVER)",
    "You et al. 2017, doi:10.1145/3097983.3098135",
)
class AverageTeachers(_MultiTeacher):
    class Params(MethodParams):
        tau: float = Field(4.0, gt=0)

    def forward(self, batch, student, teachers):
        tau = self.params.tau
        p_t = average_distribution(teacher_logits(self.name, student, teachers), tau)
        log_s = torch.log_softmax(student.logits.float() / tau, -1)
        # p_t*log(p_t) with p_t == 0 is 0: xlogy handles it.
        kl = (torch.xlogy(p_t, p_t) - p_t * log_s).sum(-1)
        return {"avg_kd": kl.mean() * tau * tau}


def confidence_weights(teacher_logits: list[Tensor], target: Tensor) -> Tensor:
    """CA-MKD's per-sample teacher weights (shape [K, B]):
    w_k = (1 - softmax_k(CE_k)) / (K - 1), CE_k the k-th teacher's cross-entropy with the
    label (Zhang et al. 2022, eq. 2; official code's `attention`). Lower CE -> higher weight;
    the weights of a sample sum to 1. One teacher gets weight 1."""
    k = len(teacher_logits)
    ce = torch.stack([F.cross_entropy(t, target, reduction="none") for t in teacher_logits])
    if k == 1:
        return torch.ones_like(ce)
    return (1.0 - ce.softmax(0)) / (k - 1)


@register_method(
    "ca_mkd",
    "confidence-aware multi-teacher KD: per-sample teacher weights (1 - softmax(CE_k))/(K-1), "
    "lower CE with the label -> higher weight (logit part)",
    "Zhang et al. 2022, arXiv:2201.00007",
)
class ConfidenceAwareMKD(_MultiTeacher):
    class Params(MethodParams):
        tau: float = Field(4.0, gt=0)

    def forward(self, batch, student, teachers):
        tau = self.params.tau
        logits = teacher_logits(self.name, student, teachers)
        w = confidence_weights(logits, batch["y"])  # teachers' outputs carry no gradient
        kl = torch.stack([softened_kl_per_sample(student.logits, t, tau) for t in logits])
        # Weighted sum over teachers, mean over the batch. The official code further divides
        # by K, a constant factor left to the method's `weight`.
        return {"ca_mkd": (w * kl).sum(0).mean()}


def project_capped_simplex(v: np.ndarray, cap: float) -> np.ndarray:
    """Euclidean projection onto {a : 0 <= a_k <= cap, sum a = 1} (needs cap * K >= 1).

    The projection is clip(v - s, 0, cap) for the shift s with sum 1; that sum is piecewise
    linear and non-increasing in s with kinks at v_k and v_k - cap, so s is found exactly by
    locating the segment that crosses 1 and interpolating."""
    kinks = np.sort(np.concatenate([v, v - cap]))
    sums = np.clip(v[None, :] - kinks[:, None], 0, cap).sum(1)  # non-increasing along kinks
    i = int(np.searchsorted(-sums, -1.0, side="left"))  # first kink whose sum <= 1
    if i == 0:
        shift = kinks[0]
    else:
        s0, s1, f0, f1 = kinks[i - 1], kinks[i], sums[i - 1], sums[i]
        shift = s1 if f0 == f1 else s0 + (f0 - 1.0) * (s1 - s0) / (f0 - f1)
    return np.clip(v - shift, 0, cap)


def min_norm_weights(grads: Tensor, cap: float = 1.0, steps: int = 2000, tol: float = 1e-10) -> Tensor:
    """argmin_a ||sum_k a_k g_k||^2 over {0 <= a_k <= cap, sum a = 1} for the K gradients in
    the rows of `grads`: accelerated projected gradient (FISTA) on the K x K Gram matrix, in
    float64 on the CPU (K is small). For K = 2 without an active cap the answer is the closed
    form a_1 = clip((g2 - g1).g2 / ||g1 - g2||^2, 0, 1)."""
    g = grads.detach().double().cpu()
    gram = (g @ g.t()).numpy()
    k = gram.shape[0]
    if k == 2 and cap >= 1.0:  # closed form on the segment between the two gradients
        diff = gram[0, 0] - 2 * gram[0, 1] + gram[1, 1]  # ||g1 - g2||^2
        a1 = 0.5 if diff <= 0 else float(np.clip((gram[1, 1] - gram[0, 1]) / diff, 0.0, 1.0))
        return torch.tensor([a1, 1.0 - a1], dtype=torch.float64)
    a = np.full(k, 1.0 / k)
    lip = 2 * float(np.linalg.eigvalsh(gram).max())
    if lip <= 0:  # all gradients are zero: every weighting is optimal
        return torch.from_numpy(a)
    y, t = a.copy(), 1.0
    for _ in range(steps):
        a_next = project_capped_simplex(y - (2 * gram @ y) / lip, cap)
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        y = a_next + ((t - 1) / t_next) * (a_next - a)
        done = np.abs(a_next - a).max() < tol
        a, t = a_next, t_next
        if done:
            break
    return torch.from_numpy(a)


@register_method(
    "aekd",
    "adaptive ensemble KD: teacher weights minimise the norm of the weighted per-teacher KD "
    "gradients w.r.t. the student logits (min-norm point on the capped simplex)",
    "Du et al. 2020, NeurIPS, 'Agree to Disagree: Adaptive Ensemble KD in Gradient Space'",
)
class AdaptiveEnsembleKD(_MultiTeacher):
    class Params(MethodParams):
        tau: float = Field(4.0, gt=0)
        # nu of the one-class-SVM form used by the official code: each weight is capped at
        # 1/(nu*K). None -> nu = 1/K, i.e. no cap (plain min-norm over the simplex).
        nu: float | None = Field(None, gt=0, le=1)
        # flatten: the gradient is the whole [B, C] d(KD_k)/d(logits); batch_mean: averaged
        # over the batch to a C-vector, as the official code does.
        grad: Literal["flatten", "batch_mean"] = "flatten"
        # Normalise each gradient before solving, then divide the weights by the gradient
        # norms and renormalise (the official code's `svm_norm` option).
        normalize: bool = False

    def teacher_weights(self, student_logits: Tensor, logits: list[Tensor]) -> Tensor:
        """The min-norm weights for this batch (shape [K], detached).

        d(tau^2 * mean_b KL_b)/d(z_s) = tau/B * (p_s - p_t): computed in closed form instead of
        K extra backward passes; the common factor tau/B does not change the minimiser."""
        p = self.params
        k = len(logits)
        if k == 1:
            return torch.ones(1, device=student_logits.device)
        with torch.no_grad():
            ps = (student_logits.float() / p.tau).softmax(-1)
            g = torch.stack([ps - (t / p.tau).softmax(-1) for t in logits])  # [K, B, C]
            g = g.mean(1) if p.grad == "batch_mean" else g.flatten(1)
            norms = g.norm(dim=1).clamp_min(1e-12)
            if p.normalize:
                g = g / norms[:, None]
            nu = 1.0 / k if p.nu is None else max(p.nu, 1.0 / k)
            a = min_norm_weights(g, cap=1.0 / (nu * k))
            if p.normalize:
                a = a / norms.double().cpu()
                a = a / a.sum()
        return a.to(device=student_logits.device, dtype=torch.float32)

    def forward(self, batch, student, teachers):
        tau = self.params.tau
        logits = teacher_logits(self.name, student, teachers)
        a = self.teacher_weights(student.logits, logits)
        kd = torch.stack([softened_kl_per_sample(student.logits, t, tau).mean() for t in logits])
        return {"aekd": (a * kd).sum()}
