"""Subclass distillation (Müller, Kornblith & Hinton 2020, arXiv:2002.03936).

Both need a model with a subclass head (`model: {name: subclass, ...}`): they read its
(B, C·s) subclass logits through the tap `subclass_logits`.

- `subclass_aux` trains the teacher's head to invent distinct, used subclasses:
  v_i = (z_i − mean z_i) / sqrt(var z_i + eps) / sqrt(T·N) per example (population variance
  over its own N = C·s logits), L_aux = (1/B)·Σ_i logsumexp_j(v_i·v_j) − 1/T − log B.
  Used with `ce` in `teacher.methods`; it returns beta·L_aux.
- `subclass_kd` distils the subclass distribution:
  alpha·tau²·H(softmax(z_T/tau), softmax(z_S/tau)) + (1−alpha)·CE(y, grouped student logits).
  H is the cross-entropy (as specified), not the KL: the two differ by the teacher's entropy,
  a constant for the student, so gradients are those of KD on the subclass logits.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdlab.errors import KdlabError
from kdlab.methods.base import Method, MethodParams, Needs, Outputs, one_teacher, register_method
from kdlab.models.subclass import SUBCLASS_LAYER


def normalize_subclass_logits(z: Tensor, temperature: float, eps: float) -> Tensor:
    """Per-example standardisation over the N subclass logits, then 1/sqrt(T·N)."""
    z = z.float()
    n = z.shape[1]
    mean = z.mean(dim=1, keepdim=True)
    var = z.var(dim=1, unbiased=False, keepdim=True)
    return (z - mean) / torch.sqrt(var + eps) / math.sqrt(temperature * n)


def subclass_aux_loss(z: Tensor, temperature: float = 1.0, eps: float = 1e-6) -> Tensor:
    """The auxiliary contrastive loss; each example is its own positive among the batch."""
    v = normalize_subclass_logits(z, temperature, eps)
    sim = v @ v.t()
    b = z.shape[0]
    return torch.logsumexp(sim, dim=1).mean() - 1.0 / temperature - math.log(b)


def soft_cross_entropy(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> Tensor:
    """H(softmax(t/tau), softmax(s/tau)), summed over outputs, mean over the batch."""
    p_t = F.softmax(teacher_logits.float() / tau, dim=-1)
    return -(p_t * F.log_softmax(student_logits.float() / tau, dim=-1)).sum(-1).mean()


def subclass_logits(out: Outputs, role: str) -> Tensor:
    z = out.features.get(SUBCLASS_LAYER)
    if z is None:
        raise KdlabError(f"the {role} has no subclass head: use `model: {{name: subclass, params: {{base: ..., subclasses: s}}}}`")
    return z


@register_method(
    "subclass_aux",
    "subclass teacher's auxiliary loss: contrastive over per-example normalised subclass logits (use with ce)",
    "Müller, Kornblith & Hinton 2020, arXiv:2002.03936",
)
class SubclassAux(Method):
    uses_teacher = False

    class Params(MethodParams):
        beta: float = Field(1.0, ge=0)
        temperature: float = Field(1.0, gt=0)
        eps: float = Field(1e-6, gt=0)

    def needs(self) -> Needs:
        return Needs(student_layers=[SUBCLASS_LAYER])

    def forward(self, batch, student, teachers):
        z = subclass_logits(student, "model trained with subclass_aux")
        p = self.params
        return {"subclass_aux": p.beta * subclass_aux_loss(z, p.temperature, p.eps)}


@register_method(
    "subclass_kd",
    "subclass distillation: alpha·tau²·H over the teacher's subclass distribution + (1-alpha)·CE on grouped logits",
    "Müller, Kornblith & Hinton 2020, arXiv:2002.03936",
)
class SubclassKD(Method):
    class Params(MethodParams):
        alpha: float = Field(0.5, ge=0, le=1)
        tau: float = Field(4.0, gt=0)

    def needs(self) -> Needs:
        return Needs(student_layers=[SUBCLASS_LAYER], teacher_layers=[SUBCLASS_LAYER])

    def forward(self, batch, student, teachers):
        p = self.params
        z_s = subclass_logits(student, "student")
        z_t = subclass_logits(one_teacher(teachers, self.name), "teacher")
        if z_s.shape != z_t.shape:
            raise KdlabError(
                f"subclass_kd: the student has {z_s.shape[1]} subclass logits, the teacher {z_t.shape[1]}; "
                "give both the same `subclasses`"
            )
        kd = p.alpha * p.tau**2 * soft_cross_entropy(z_s, z_t, p.tau)
        ce = (1 - p.alpha) * F.cross_entropy(student.logits.float(), batch["y"])
        return {"subclass_kd": kd, "subclass_ce": ce}
