"""Hinton's knowledge distillation on softened logits."""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdlab.methods.base import Method, MethodParams, one_teacher, register_method
from kdlab.methods.logit_utils import zscore


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, tau: float, standardize: bool = False) -> Tensor:
    """tau^2 * KL(softmax(t/tau) || softmax(s/tau)), summed over classes, mean over the batch.

    kl_div takes the *student* log-probabilities as input and the teacher's as target:
    the other order is a common bug that computes KL(student || teacher).
    With `standardize`, both logit vectors are z-scored first (Sun et al. 2024).
    """
    s, t = student_logits.float(), teacher_logits.float()
    if standardize:
        s, t = zscore(s), zscore(t)
    log_s = F.log_softmax(s / tau, dim=-1)
    log_t = F.log_softmax(t / tau, dim=-1)
    kl = F.kl_div(log_s, log_t, reduction="none", log_target=True).sum(-1)
    return kl.mean() * tau * tau


@register_method(
    "kd",
    "Hinton KD: tau^2-scaled KL to the teacher's softened distribution (alpha mixes in CE; "
    "standardize: z-score logits first, Sun et al. 2024)",
    "Hinton et al. 2015, arXiv:1503.02531",
)
class KD(Method):
    class Params(MethodParams):
        tau: float = Field(4.0, gt=0)
        # If set, the method returns alpha*KD + (1-alpha)*CE by itself; otherwise only the KD
        # term, to be combined with `ce` through the methods' weights.
        alpha: Optional[float] = Field(None, ge=0, le=1)
        # Logit standardisation (Sun et al. 2024, arXiv:2403.01427): z-score both logit
        # vectors before the temperature softmax.
        standardize: bool = False

    def forward(self, batch, student, teachers):
        p = self.params
        t = one_teacher(teachers)
        kd = kd_loss(student.logits, t.logits, p.tau, p.standardize)
        if p.alpha is None:
            return {"kd": kd}
        # flatten: (B, T, V) token logits of language models as well as (B, C)
        ce = F.cross_entropy(student.logits.flatten(0, -2), batch["y"].flatten())
        return {"kd": p.alpha * kd, "kd_ce": (1 - p.alpha) * ce}
