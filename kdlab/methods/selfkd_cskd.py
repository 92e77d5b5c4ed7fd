"""CS-KD: class-wise self-knowledge distillation (Yun et al. 2020, arXiv:2003.13964).

`transform_batch` appends, for each sample, another training sample of the same class
(drawn uniformly from that class, prepared and augmented as the loader does). With f(x) on
the first half and f(x′) on the appended half:
L = CE(f(x), y) + lambda·tau²·KL(softmax(f(x′)/tau).detach ‖ softmax(f(x)/tau)).
Use it alone (it contains the CE term); the batch the model sees is twice the loader's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from kdlab.errors import KdlabError
from kdlab.methods.base import Method, MethodParams, Needs, register_method
from kdlab.methods.logit_kd import kd_loss
from kdlab.methods.selfkd_common import concat_batches, draw_train, epoch_generators


def cs_kd_loss(logits, partner_logits, y, tau: float, lam: float):
    return F.cross_entropy(logits.float(), y), lam * kd_loss(logits, partner_logits.detach(), tau)


@register_method(
    "cs_kd",
    "class-wise self-KD: match the softened prediction of another sample of the same class (includes CE)",
    "Yun et al. 2020, arXiv:2003.13964",
)
class CSKD(Method):
    uses_teacher = False

    class Params(MethodParams):
        tau: float = Field(4.0, gt=0)
        lam: float = Field(1.0, ge=0)

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        # Labels only: a streamed split gives them without reading its inputs (partners are then
        # read sample by sample in this process when drawn).
        y = ctx.data.train.labels() if ctx.data is not None else None
        if y is None or y.dim() != 1:
            raise KdlabError("cs_kd needs class labels `y` (one integer per sample) of the training split to pair "
                             "samples of one class")
        y = y.long().to(ctx.device)
        order = torch.argsort(y.cpu(), stable=True)
        counts = torch.bincount(y.cpu(), minlength=int(y.max()) + 1)
        self._data = ctx.data
        self._order = order.to(y.device)
        self._counts = counts.to(y.device)
        self._starts = (torch.cumsum(counts, 0) - counts).to(y.device)
        self._gens = None

    def on_epoch_start(self, epoch):
        super().on_epoch_start(epoch)
        self._gens = epoch_generators(self._order.device)

    def partners(self, y, gen) -> torch.Tensor:
        """For each label, a random training index of that class."""
        y = y.to(self._counts.device)
        u = torch.rand(len(y), generator=gen).to(y.device)
        offset = (u * self._counts[y]).long().clamp_max(self._counts[y] - 1)
        return self._order[self._starts[y] + offset]

    def transform_batch(self, batch):
        if self._gens is None:
            self._gens = epoch_generators(self._order.device)
        idx_gen, aug_gen = self._gens
        extra = draw_train(self._data, self.partners(batch["y"], idx_gen), aug_gen)
        out = concat_batches(batch, extra)
        out["cs_kd_n"] = torch.tensor(len(batch["y"]))
        return out

    def forward(self, batch, student, teachers):
        n = int(batch["cs_kd_n"]) if "cs_kd_n" in batch else len(batch["y"]) // 2
        ce, kd = cs_kd_loss(student.logits[:n], student.logits[n:], batch["y"][:n], self.params.tau, self.params.lam)
        return {"cs_kd_ce": ce, "cs_kd": kd}
