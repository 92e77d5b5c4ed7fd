"""Collaborative Distillation: items sampled rank-biased from the teacher's top-M get the soft
label sigma((y_T + t2) / t1) for the student's sigma(y_S)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdlab.methods.base import register_method
from kdlab.methods.rank_utils import RankingMethod, score, tables_of


def cd_loss(student_scores: Tensor, teacher_scores: Tensor, t1: float, t2: float) -> Tensor:
    """BCE(sigma(y_S), sigma((y_T + t2) / t1)), mean over users and sampled items."""
    target = torch.sigmoid((teacher_scores + t2) / t1)
    return F.binary_cross_entropy_with_logits(student_scores, target)


@register_method(
    "cd",
    "Collaborative Distillation: rank-biased samples of the teacher's top-M, soft labels sigma((y_T+t2)/t1), BCE",
    "Lee et al., ICDM 2019, doi:10.1109/ICDM.2019.00146",
)
class CD(RankingMethod):
    class Params(RankingMethod.Params):
        K: int = Field(10, ge=1)  # items sampled per user
        M: int = Field(100, ge=1)  # from the teacher's top-M
        T: float = Field(10.0, gt=0)  # P(rank r) ∝ exp(-r/T)
        t1: float = Field(1.0, gt=0)
        t2: float = 0.0

    def build(self, student, teachers):
        self.compute_top(tables_of(teachers[0], "teacher"), self.params.M)

    def forward(self, batch, student, teachers):
        p = self.params
        users = batch["x"]
        _, items = self.draw_from_top(users, min(p.K, self._top.shape[1]), p.T, replacement=False)
        y_t = score(tables_of(teachers[0], "teacher"), users, items).detach()
        return {"cd": cd_loss(score(tables_of(student), users, items), y_t, p.t1, p.t2)}
