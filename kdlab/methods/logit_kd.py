"""Hinton's knowledge distillation on softened logits."""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

from kdlab.methods.base import Method, MethodParams, one_teacher, register_method
from kdlab.methods.logit_utils import softened_kl_per_sample, zscore


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, tau: float, standardize: bool = False) -> Tensor:
    """tau^2 * KL(softmax(t/tau) || softmax(s/tau)), summed over classes, mean over the batch.

    The mean runs over every leading axis: samples, or (batch, time) tokens of a language model.
    With `standardize`, both logit vectors are z-scored first (Sun et al. 2024).
    """
    s, t = student_logits.float(), teacher_logits.float()
    if standardize:
        s, t = zscore(s), zscore(t)
    return softened_kl_per_sample(s, t, tau).mean()


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
        return {"kd": kd_loss(student.logits, t.logits, p.tau, p.standardize)}
