"""Supervised baselines: plain cross-entropy and label smoothing (no teacher)."""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field

from kdlab.methods.base import Method, MethodParams, Needs, register_method


@register_method("ce", "plain supervised cross-entropy with the labels (the baseline)")
class CE(Method):
    uses_teacher = False

    def forward(self, batch, student, teachers):
        # flatten: (B, T, V) token logits of language models as well as (B, C)
        return {"ce": F.cross_entropy(student.logits.flatten(0, -2), batch["y"].flatten())}


@register_method(
    "ls",
    "label smoothing: CE with target (1-eps)*onehot + eps/K (universe knowledge only)",
    "Szegedy et al. 2016, arXiv:1512.00567",
)
class LabelSmoothing(Method):
    uses_teacher = False

    class Params(MethodParams):
        eps: float = Field(0.1, ge=0, lt=1)

    def forward(self, batch, student, teachers):
        logits, y = student.logits.flatten(0, -2), batch["y"].flatten()
        return {"ls": F.cross_entropy(logits, y, label_smoothing=self.params.eps)}
