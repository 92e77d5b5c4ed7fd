"""The education loss of one batch drawn from group k:

    L = alpha * CE(z, y) + (1 - alpha) * tau^2 * KL(p_k || softmax(z[:, S_k] / tau))

z: student logits over all classes seen so far; S_k: the columns of group k's classes, in the
order of the teacher's outputs; p_k: the teacher's softened distribution over its group (the
mean of several teachers' when the group has more than one). The KD softmax is renormalised
over the slice only. KL differs from the cross-entropy H(p_k, q) by the teacher's entropy, a
constant: same gradients, and zero when the student matches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlab.methods.logit_utils import kl_to_target_per_sample


def teacher_distribution(teacher_logits: list[Tensor], tau: float) -> Tensor:
    return torch.stack([F.softmax(t.float() / tau, dim=-1) for t in teacher_logits]).mean(0)


def sliced_kd_loss(student_logits: Tensor, slice_cols: Tensor, teacher_logits: list[Tensor], tau: float) -> Tensor:
    p = teacher_distribution(teacher_logits, tau)
    return kl_to_target_per_sample(student_logits[:, slice_cols], p, tau).mean()


def education_loss(
    student_logits: Tensor, targets: Tensor, slice_cols: Tensor, teacher_logits: list[Tensor], alpha: float, tau: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """targets: logit columns of the labels. Returns the total and its two weighted terms."""
    ce = F.cross_entropy(student_logits.float(), targets)
    kd = sliced_kd_loss(student_logits, slice_cols, teacher_logits, tau) if alpha < 1 else ce.new_zeros(())
    terms = {"ce": alpha * ce, "kd": (1 - alpha) * kd}
    return terms["ce"] + terms["kd"], terms


def mixed_education_loss(
    student_logits: Tensor, targets: Tensor, parts: list[tuple[Tensor, Tensor, list[Tensor]]], alpha: float, tau: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """The education loss of a batch mixing groups (`replay: mixed`): each sample is distilled
    by its own group's teacher on its own group's slice. parts: (slice columns S_k, rows of the
    batch from group k, the teacher logits of those rows) per group present. The KD term is the
    mean over the whole batch of the per-sample sliced KL, so a batch of one group gives
    `education_loss`'s value."""
    ce = F.cross_entropy(student_logits.float(), targets)
    kd = ce.new_zeros(())
    if alpha < 1:
        for cols, rows, teacher_logits in parts:
            p = teacher_distribution(teacher_logits, tau)
            kd = kd + kl_to_target_per_sample(student_logits[rows][:, cols], p, tau).sum()
        kd = kd / student_logits.shape[0]
    terms = {"ce": alpha * ce, "kd": (1 - alpha) * kd}
    return terms["ce"] + terms["kd"], terms
