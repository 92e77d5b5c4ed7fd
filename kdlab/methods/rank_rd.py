"""Ranking Distillation: the teacher's top-K unseen items are extra positives for the student,
weighted by their teacher rank."""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdlab.methods.base import register_method
from kdlab.methods.rank_utils import RankingMethod, score, tables_of
from kdlab.tasks.ranking_ops import rank_biased_weights


def rd_loss(student_scores: Tensor, weights: Tensor) -> Tensor:
    """-sum_r w_r log sigma(s_{u, pi_r}), mean over users; scores (B, K), weights (K,)."""
    return -(weights * F.logsigmoid(student_scores)).sum(1).mean()


@register_method(
    "rd",
    "Ranking Distillation: teacher's top-K unseen items as weighted positives, w_r ∝ exp(-r/T) (sum 1)",
    "Tang & Wang, KDD 2018, arXiv:1809.07428",
)
class RD(RankingMethod):
    class Params(RankingMethod.Params):
        K: int = Field(10, ge=1)
        T: float = Field(10.0, gt=0)

    def build(self, student, teachers):
        self.compute_top(tables_of(teachers[0], "teacher"), self.params.K)

    def forward(self, batch, student, teachers):
        users = batch["x"]
        items = self._top[users]  # (B, K), teacher order
        w = rank_biased_weights(items.shape[1], self.params.T, users.device)
        return {"rd": rd_loss(score(tables_of(student), users, items), w / w.sum())}
