"""Teacher-free KD (Yuan et al. 2020, arXiv:1909.11723), both variants.

- `tf_kd_self`: the teacher is a pretrained copy of the student's own architecture (give it
  as `teacher:` with the student's model); L = (1−alpha)·CE + alpha·tau²·KL(p_T^tau ‖ p_S^tau).
- `tf_kd_reg`: no teacher; a hand-made "virtual teacher" puts probability a on the true
  class and (1−a)/(K−1) on every other. As in the official code, that distribution is
  softened as softmax(p_d/tau) and compared with the student's unsoftened softmax:
  L = (1−alpha)·CE + alpha·multiplier·KL(softmax(p_d/tau) ‖ softmax(z)).
  (The official code averages the KL over batch × classes; kdlab sums over classes, so its
  multiplier is the official one divided by K.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from kdlab.errors import KdlabError
from kdlab.methods.base import Method, MethodParams, Needs, one_teacher, register_method
from kdlab.methods.logit_kd import kd_loss


def virtual_teacher(y, num_classes: int, a: float):
    """a on the true class, (1−a)/(K−1) elsewhere."""
    p = torch.full((len(y), num_classes), (1 - a) / (num_classes - 1), device=y.device)
    p[torch.arange(len(y), device=y.device), y] = a
    return p


def tf_kd_reg_loss(logits, y, a: float, tau: float):
    """KL(softmax(p_d/tau) ‖ softmax(z)), summed over classes, mean over the batch."""
    target = F.softmax(virtual_teacher(y, logits.shape[1], a) / tau, dim=-1)
    log_p = F.log_softmax(logits.float(), dim=-1)
    return (target * (target.log() - log_p)).sum(-1).mean()


@register_method(
    "tf_kd_reg",
    "teacher-free KD, reg: KL to a hand-made teacher (a on the true class) softened by tau, mixed with CE",
    "Yuan et al. 2020, arXiv:1909.11723",
)
class TfKDReg(Method):
    uses_teacher = False

    class Params(MethodParams):
        a: float = Field(0.99, gt=0, lt=1)
        tau: float = Field(20.0, gt=0)
        alpha: float = Field(0.5, ge=0, le=1)
        multiplier: float = Field(1.0, ge=0)

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        if ctx.num_classes < 2:
            raise KdlabError("tf_kd_reg needs at least 2 classes")

    def forward(self, batch, student, teachers):
        p = self.params
        z, y = student.logits, batch["y"]
        return {
            "tf_kd_ce": (1 - p.alpha) * F.cross_entropy(z.float(), y),
            "tf_kd_reg": p.alpha * p.multiplier * tf_kd_reg_loss(z, y, p.a, p.tau),
        }


def same_architecture(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return type(a) is type(b) and sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape for k in sa)


@register_method(
    "tf_kd_self",
    "teacher-free KD, self: a pretrained copy of the student's own architecture is the teacher",
    "Yuan et al. 2020, arXiv:1909.11723",
)
class TfKDSelf(Method):
    class Params(MethodParams):
        tau: float = Field(6.0, gt=0)
        alpha: float = Field(0.95, ge=0, le=1)

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        if ctx.teachers and not same_architecture(ctx.teachers[0], ctx.student):
            raise KdlabError(
                "tf_kd_self: the teacher must be a pretrained copy of the student's architecture; "
                "give `teacher.model` the same name and params as `student` (or use `kd`)"
            )

    def forward(self, batch, student, teachers):
        p = self.params
        t = one_teacher(teachers, self.name)
        return {
            "tf_kd_ce": (1 - p.alpha) * F.cross_entropy(student.logits.float(), batch["y"]),
            "tf_kd_self": p.alpha * kd_loss(student.logits, t.logits, p.tau),
        }
