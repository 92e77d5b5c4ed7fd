"""DLB: self-distillation from the last mini-batch (Shen et al. 2022, arXiv:2203.16172).

Each training batch is the loader's new samples plus the previous step's new samples again
(re-drawn, so another augmented view); the logits the model gave those samples in the
previous step are the soft targets:
L = CE(all logits, y) + lambda·tau²·KL(softmax(z_prev/tau) ‖ softmax(z_now/tau)) on the repeated half.
Use it alone (it contains the CE term). The state restarts every epoch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from kdlab.methods.base import Method, MethodParams, Needs, register_method
from kdlab.methods.logit_kd import kd_loss
from kdlab.methods.selfkd_common import concat_batches, draw_train, epoch_generators


@register_method(
    "dlb",
    "self-distillation from the last mini-batch: half of each batch repeats the previous one, whose old logits are targets",
    "Shen et al. 2022, arXiv:2203.16172",
)
class DLB(Method):
    uses_teacher = False

    class Params(MethodParams):
        tau: float = Field(3.0, gt=0)
        lam: float = Field(1.0, ge=0)

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self._data = ctx.data
        self._device = ctx.device  # where batches are (a streamed split has no tensors to ask)
        self._reset()

    def _reset(self):
        self._prev_index = None
        self._prev_logits = None
        self._gens = None

    def on_epoch_start(self, epoch):
        super().on_epoch_start(epoch)
        self._reset()
        self._gens = epoch_generators(self._device)

    def transform_batch(self, batch):
        n = len(batch["y"])
        out = batch
        if self._prev_index is not None:
            if self._gens is None:
                self._gens = epoch_generators(self._device)
            out = concat_batches(batch, draw_train(self._data, self._prev_index, self._gens[1]))
        out["dlb_n"] = torch.tensor(n)
        self._prev_index = batch["index"]
        return out

    def forward(self, batch, student, teachers):
        z = student.logits
        n = int(batch["dlb_n"]) if "dlb_n" in batch else len(z)
        terms = {"dlb_ce": F.cross_entropy(z.float(), batch["y"])}
        if self._prev_logits is not None and len(z) > n:
            terms["dlb"] = self.params.lam * kd_loss(z[n:], self._prev_logits, self.params.tau)
        else:
            terms["dlb"] = z.new_zeros(())
        self._prev_logits = z[:n].detach()
        return terms
