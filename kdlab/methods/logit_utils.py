"""Helpers shared by the logit-based methods (KD, DKD, CTKD, multi-teacher)."""

from __future__ import annotations

import torch
from torch import Tensor

from kdlab.errors import KdlabError
from kdlab.methods.base import need_teachers

# Sun et al. 2024 divide by (std + 1e-7); the epsilon only guards constant logit vectors.
ZSCORE_EPS = 1e-7


def zscore(logits: Tensor) -> Tensor:
    """Logit standardisation (Sun et al. 2024, arXiv:2403.01427): subtract each logit vector's
    mean and divide by its standard deviation (Bessel-corrected, as in the official code),
    before the temperature softmax. Removes the need for the student to match the teacher's
    logit range; only the relations between logits remain."""
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (std + ZSCORE_EPS)


def check_same_width(method: str, student: Tensor, teachers: list[Tensor]) -> None:
    """Logit methods compare distributions class by class: every teacher must predict the
    student's label set."""
    for i, t in enumerate(teachers):
        if t is None or student is None:
            raise KdlabError(f"method '{method}' needs logits from the student and every teacher")
        if t.shape[-1] != student.shape[-1]:
            raise KdlabError(
                f"method '{method}': teacher {i} gives {t.shape[-1]} logits but the student {student.shape[-1]}; "
                "teachers and student must share the label set"
            )


def teacher_logits(method: str, student, teachers) -> list[Tensor]:
    logits = [t.logits for t in need_teachers(method, teachers)]
    check_same_width(method, student.logits, logits)
    return [l.float() for l in logits]


def kl_to_target_per_sample(student_logits: Tensor, target: Tensor, tau) -> Tensor:
    """tau^2 * KL(target || softmax(s/tau)) per sample (shape [...]), summed over the last
    (class) axis; `target` is a distribution over the same classes, exact zeros allowed.

    The one KL of the classification methods: the student's log-probabilities are the second
    argument; the other order (a common bug) computes KL(student || teacher)."""
    log_s = torch.log_softmax(student_logits.float() / tau, dim=-1)
    t = target.float()
    return (torch.special.xlogy(t, t) - t * log_s).sum(-1) * tau * tau


def softened_kl_per_sample(student_logits: Tensor, teacher_logits: Tensor, tau) -> Tensor:
    """tau^2 * KL(softmax(t/tau) || softmax(s/tau)) per sample; tau may be a tensor that
    takes gradients (CTKD), so both sides stay in log space (no 0 * log 0 in the backward)."""
    log_s = torch.log_softmax(student_logits.float() / tau, dim=-1)
    log_t = torch.log_softmax(teacher_logits.float() / tau, dim=-1)
    return (log_t.exp() * (log_t - log_s)).sum(-1) * tau * tau
