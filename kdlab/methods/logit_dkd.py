"""Decoupled knowledge distillation (DKD): KD split into a target-class and a
non-target-class term that are weighted separately."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from kdlab.methods.base import Method, MethodParams, one_teacher, register_method
from kdlab.methods.logit_utils import check_same_width, zscore


def _binary_log_probs(log_p: Tensor, target: Tensor) -> Tensor:
    """[log p_gt, log(1 - p_gt)] per sample from full log-probabilities (shape [B, 2]).
    log(1 - p_gt) is the logsumexp of the non-target log-probabilities: stable when p_gt -> 1."""
    gt = log_p.gather(1, target[:, None])
    rest = log_p.scatter(1, target[:, None], float("-inf")).logsumexp(1, keepdim=True)
    return torch.cat([gt, rest], dim=1)


def _drop_target(z: Tensor, target: Tensor) -> Tensor:
    """The logits of the non-target classes ([B, C-1]), in class order."""
    keep = torch.ones_like(z, dtype=torch.bool).scatter(1, target[:, None], False)
    return z[keep].view(z.shape[0], z.shape[1] - 1)


def dkd_terms(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, tau: float,
              standardize: bool = False) -> tuple[Tensor, Tensor]:
    """(TCKD, NCKD) of Zhao et al. 2022, each tau^2-scaled and averaged over the batch.

    TCKD = KL(b_t || b_s) with b = [p_gt, 1 - p_gt] (binary target vs rest probabilities);
    NCKD = KL(p~_t || p~_s) with p~ the softmax over the non-target classes only.
    """
    s, t = student_logits.float(), teacher_logits.float()
    if standardize:
        s, t = zscore(s), zscore(t)
    s, t = s / tau, t / tau
    b_s = _binary_log_probs(torch.log_softmax(s, 1), target)
    b_t = _binary_log_probs(torch.log_softmax(t, 1), target)
    tckd = (b_t.exp() * (b_t - b_s)).sum(1).mean() * tau * tau
    n_s = torch.log_softmax(_drop_target(s, target), 1)
    n_t = torch.log_softmax(_drop_target(t, target), 1)
    nckd = (n_t.exp() * (n_t - n_s)).sum(1).mean() * tau * tau
    return tckd, nckd


def warmup_factor(epoch: int, warmup: int) -> float:
    """mdistiller's linear warm-up min(epoch / warmup, 1) with 1-based epochs; kdlab's are
    0-based, so the first epoch gets 1/warmup."""
    return 1.0 if warmup <= 0 else min((epoch + 1) / warmup, 1.0)


@register_method(
    "dkd",
    "decoupled KD: alpha*TCKD (target vs rest) + beta*NCKD (among non-targets), linear warm-up "
    "over `warmup` epochs; standardize: z-score logits first",
    "Zhao et al. 2022, arXiv:2203.08679",
)
class DKD(Method):
    class Params(MethodParams):
        # mdistiller's CIFAR-100 defaults (beta 8 for most pairs; 2 for resnet56->20 etc.).
        alpha: float = Field(1.0, ge=0)
        beta: float = Field(8.0, ge=0)
        tau: float = Field(4.0, gt=0)
        warmup: int = Field(20, ge=0)
        standardize: bool = False

    def forward(self, batch, student, teachers):
        p = self.params
        t = one_teacher(teachers, self.name)
        check_same_width(self.name, student.logits, [t.logits])
        tckd, nckd = dkd_terms(student.logits, t.logits, batch["y"], p.tau, p.standardize)
        w = warmup_factor(self.epoch, p.warmup)
        return {"dkd_tckd": w * p.alpha * tckd, "dkd_nckd": w * p.beta * nckd}
