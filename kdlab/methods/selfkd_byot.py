"""BYOT: Be Your Own Teacher (Zhang et al. 2019, arXiv:1905.08094).

Shallow classifiers q_1…q_{C−1} sit on the student's intermediate hint points (every hint
point but the deepest); q_C is the student's own classifier. Each shallow head is a
bottleneck to the student's penultimate width (1×1 conv-BN-ReLU + global pooling for maps,
Linear-ReLU for vectors) giving F_i, then a linear classifier; F_C is the input of the
student's `fc`. Built in `build()` from the first batch's tapped features.

L = (1−alpha)·Σ_{i≤C} CE(q_i, y) + alpha·tau²·Σ_{i<C} H(softmax(q_C/tau).detach, softmax(q_i/tau))
    + beta·Σ_{i<C} ‖F_i − F_C.detach‖²   (squared norm summed over features, mean over the batch).
Use it alone (it contains the CE of the final classifier).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from kdlab.errors import KdlabError
from kdlab.methods.base import Method, MethodParams, Needs, register_method


def _bottleneck(feat: torch.Tensor, width: int) -> nn.Module:
    if feat.dim() == 4:
        return nn.Sequential(nn.Conv2d(feat.shape[1], width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    if feat.dim() == 3:
        return nn.Sequential(nn.Conv1d(feat.shape[1], width, 1, bias=False), nn.BatchNorm1d(width), nn.ReLU(),
                             nn.AdaptiveAvgPool1d(1), nn.Flatten(1))
    if feat.dim() == 2:
        return nn.Sequential(nn.Linear(feat.shape[1], width), nn.ReLU())
    raise KdlabError(f"byot: cannot attach a classifier to a feature of shape {tuple(feat.shape)}")


def soft_ce(student_logits, teacher_logits, tau: float):
    p_t = F.softmax(teacher_logits.float() / tau, dim=-1)
    return -(p_t * F.log_softmax(student_logits.float() / tau, dim=-1)).sum(-1).mean()


def byot_loss(aux_logits, final_logits, aux_feats, final_feat, y, alpha, tau, beta):
    ce = sum(F.cross_entropy(q.float(), y) for q in [*aux_logits, final_logits])
    t = final_logits.detach()
    kd = sum(soft_ce(q, t, tau) for q in aux_logits)
    feat = sum(((f.float() - final_feat.detach().float()) ** 2).sum(-1).mean() for f in aux_feats)
    return (1 - alpha) * ce, alpha * tau**2 * kd, beta * feat


@register_method(
    "byot",
    "be your own teacher: shallow classifiers on the student's stages learn from its final classifier (includes CE)",
    "Zhang et al. 2019, arXiv:1905.08094",
)
class BYOT(Method):
    uses_teacher = False

    class Params(MethodParams):
        alpha: float = Field(0.1, ge=0, le=1)
        tau: float = Field(3.0, gt=0)
        beta: float = Field(1e-6, ge=0)

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        hints = list(getattr(ctx.student, "hint_points", []))
        fc = getattr(ctx.student, "fc", None)
        if len(hints) < 2 or fc is None:
            raise KdlabError(
                f"byot needs a zoo model with at least 2 hint points and an `fc` (this student has {len(hints)}); "
                "e.g. mlp with 2+ hidden layers or cnn2d with 2+ channels"
            )
        self.layers = [f"hint:{i}" for i in range(len(hints) - 1)]
        self.heads = nn.ModuleList()
        self.classifiers = nn.ModuleList()
        self._fc_in: dict = {}
        self._hook = fc.register_forward_pre_hook(lambda _m, inp: self._fc_in.__setitem__("x", inp[0]))

    def needs(self) -> Needs:
        return Needs(student_layers=list(self.layers))

    def build(self, student, teachers):
        width = self._fc_in["x"].shape[1]
        for layer in self.layers:
            self.heads.append(_bottleneck(student.features[layer], width))
            self.classifiers.append(nn.Linear(width, student.logits.shape[1]))

    def forward(self, batch, student, teachers):
        p = self.params
        feats = [h(student.features[l]) for h, l in zip(self.heads, self.layers)]
        logits = [c(f) for c, f in zip(self.classifiers, feats)]
        ce, kd, feat = byot_loss(logits, student.logits, feats, self._fc_in.pop("x"), batch["y"], p.alpha, p.tau, p.beta)
        return {"byot_ce": ce, "byot_kd": kd, "byot_feat": feat}

    def on_epoch_end(self, epoch):
        if epoch == self.total_epochs - 1:
            self._hook.remove()  # the trained model keeps no hook
