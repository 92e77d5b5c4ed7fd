"""Bayesian personalised ranking: the training loss of the ranking backbones (no teacher)."""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdlab.methods.base import Needs, register_method
from kdlab.methods.rank_utils import RankingMethod, score, tables_of
from kdlab.tasks.ranking_ops import uniform_negatives


def bpr_loss(pos: Tensor, neg: Tensor) -> Tensor:
    """-log sigma(s_ui - s_uj), mean over the (user, positive, negative) triples."""
    return -F.logsigmoid(pos[:, None] - neg).mean()


@register_method(
    "bpr",
    "BPR loss on (user, positive, uniformly sampled unseen negative) triples; optional L2 on batch embeddings",
    "Rendle et al. 2009, arXiv:1205.2618",
)
class BPR(RankingMethod):
    uses_teacher = False

    class Params(RankingMethod.Params):
        num_neg: int = Field(1, ge=1)
        # L2 on the batch's raw embeddings, reg/2 * (|e_u|^2 + |e_i|^2 + |e_j|^2) / B (LightGCN's form).
        reg: float = Field(0.0, ge=0)

    def forward(self, batch, student, teachers):
        users, pos = batch["x"], batch["item"]
        t = tables_of(student, "student")
        neg = uniform_negatives(users, self.params.num_neg, self.csr(users.device))
        out = {"bpr": bpr_loss(score(t, users, pos), score(t, users, neg))}
        if self.params.reg > 0:
            model = self._student_ref[0]  # the raw (layer-0) embeddings, as LightGCN regularises
            eu, ei = (model.user.weight, model.item.weight) if hasattr(model, "user") else (t.users, t.items)
            sq = eu[users].pow(2).sum() + ei[pos].pow(2).sum() + ei[neg].pow(2).sum() / self.params.num_neg
            out["bpr_reg"] = self.params.reg / 2 * sq / len(users)
        return out
