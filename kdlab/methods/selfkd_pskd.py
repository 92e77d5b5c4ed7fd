"""PS-KD: progressive self-knowledge distillation (Kim et al. 2021, arXiv:2006.12000).

Target ỹ = (1−alpha_e)·onehot(y) + alpha_e·p_{e−1}(x), where p_{e−1}(x) is the model's own
softmax for that sample when it was last trained on it (the previous epoch), kept per sample
in a buffer indexed by `batch["index"]` (checkpointed with the run); alpha_e = alpha_T·e/E
with e = 1…E the epoch. Before a sample has a stored prediction it is its one-hot label, as
in the official code. Loss: soft-target CE −Σ ỹ·log p. Use it alone (it replaces CE).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from kdlab.methods.base import Method, MethodParams, Needs, register_method


def ps_kd_loss(logits, y, prev, alpha: float):
    onehot = F.one_hot(y, logits.shape[1]).float()
    target = (1 - alpha) * onehot + alpha * prev
    return -(target * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


@register_method(
    "ps_kd",
    "progressive self-KD: targets mix the label with the model's own previous-epoch prediction (replaces CE)",
    "Kim et al. 2021, arXiv:2006.12000",
)
class PSKD(Method):
    uses_teacher = False

    class Params(MethodParams):
        alpha_T: float = Field(0.8, ge=0, le=1)

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.register_buffer("prev", torch.zeros(ctx.train_size, ctx.num_classes))
        self.register_buffer("seen", torch.zeros(ctx.train_size, dtype=torch.bool))

    def alpha(self) -> float:
        return self.params.alpha_T * (self.epoch + 1) / self.total_epochs

    def forward(self, batch, student, teachers):
        z, y, idx = student.logits, batch["y"], batch["index"]
        onehot = F.one_hot(y, z.shape[1]).float()
        prev = torch.where(self.seen[idx, None], self.prev[idx], onehot)
        loss = ps_kd_loss(z, y, prev, self.alpha())
        if self.training:
            self.prev[idx] = F.softmax(z.detach().float(), dim=-1)
            self.seen[idx] = True
        return {"ps_kd": loss}
