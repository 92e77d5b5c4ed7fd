"""Hinton's knowledge distillation on softened logits."""

from __future__ import annotations

from typing import Optional

from pydantic import Field
from torch import Tensor

from kdlab.methods.base import Method, MethodParams, one_teacher, register_method
from kdlab.methods.lm_distill import token_mask
from kdlab.methods.logit_utils import softened_kl_per_sample, zscore


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, tau: float, standardize: bool = False,
            mask: Optional[Tensor] = None) -> Tensor:
    """tau^2 * KL(softmax(t/tau) || softmax(s/tau)), summed over classes, mean over the batch.

    The mean runs over every leading axis: samples, or (batch, time) tokens of a language model
    or a token classifier; with `mask` (the leading shape, True where a position counts) over
    the masked-in positions only. With `standardize`, both logit vectors are z-scored first
    (Sun et al. 2024).
    """
    s, t = student_logits.float(), teacher_logits.float()
    if standardize:
        s, t = zscore(s), zscore(t)
    per = softened_kl_per_sample(s, t, tau)
    if mask is None:
        return per.mean()
    return per[mask].sum() / mask.sum().clamp_min(1)


@register_method(
    "kd",
    "Hinton KD: tau^2-scaled KL to the teacher's softened distribution ("
    "standardize: z-score logits first, Sun et al. 2024)",
    "Hinton et al. 2015, arXiv:1503.02531",
)
class KD(Method):
    class Params(MethodParams):
        tau: float = Field(4.0, gt=0)
        # Logit standardisation (Sun et al. 2024, arXiv:2403.01427): z-score both logit
        # vectors before the temperature softmax.
        standardize: bool = False

    def forward(self, batch, student, teachers):
        p = self.params
        t = one_teacher(teachers, self.name)
        # The CE/KD mix is the config's weights: [{name: ce, weight: a}, {name: kd, weight: 1-a}].
        # Token logits (B, T, C): positions labelled -100 or masked out (padding) are not distilled.
        mask = token_mask(batch, student.logits) if student.logits.dim() > 2 else None
        return {"kd": kd_loss(student.logits, t.logits, p.tau, p.standardize, mask)}
