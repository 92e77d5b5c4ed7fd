"""Relaxed Ranking Distillation: a list-wise (Plackett-Luce) loss that keeps the order of K
"interesting" items sampled from the teacher's top-M above L uninteresting ones, without
ordering the uninteresting items among themselves."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from kdlab.methods.base import register_method
from kdlab.methods.rank_utils import RankingMethod, score, tables_of


def rrd_loss(interesting: Tensor, uninteresting: Tensor) -> Tensor:
    """-sum_k [s_k - log(sum_{l>=k} e^{s_l} + sum_j e^{s_j^unint})], mean over users.
    interesting: (B, K) in teacher order, best first; uninteresting: (B, L)."""
    tail = torch.logcumsumexp(interesting.flip(1), dim=1).flip(1)  # log sum_{l>=k} e^{s_l}
    below = torch.logsumexp(uninteresting, dim=1, keepdim=True)
    return -(interesting - torch.logaddexp(tail, below)).sum(1).mean()


@register_method(
    "rrd",
    "Relaxed Ranking Distillation: K items from the teacher's top-M (∝ exp(-r/T), in teacher order) above L uniform others",
    "Kang et al., CIKM 2020, arXiv:2009.05711 (DE-RRD)",
)
class RRD(RankingMethod):
    class Params(RankingMethod.Params):
        K: int = Field(10, ge=1)
        L: int = Field(100, ge=1)
        M: int = Field(100, ge=1)
        T: float = Field(10.0, gt=0)

    def build(self, student, teachers):
        self.compute_top(tables_of(teachers[0], "teacher"), self.params.M)

    def sample(self, users: Tensor) -> tuple[Tensor, Tensor]:
        """(interesting (B, K) in teacher order, uninteresting (B, L) outside the top-M)."""
        p = self.params
        ranks, _ = self.draw_from_top(users, min(p.K, self._top.shape[1]), p.T, replacement=False)
        ranks = ranks.sort(1).values  # keep the teacher's order
        top = self._top[users]
        inter = top.gather(1, ranks)
        # Uniform over items outside the teacher's top-M (collisions redrawn).
        unint = torch.randint(0, self.num_items, (len(users), p.L), device=users.device)
        top_sorted = top.sort(1).values
        for _ in range(20):
            pos = torch.searchsorted(top_sorted, unint).clamp(max=top.shape[1] - 1)
            bad = top_sorted.gather(1, pos) == unint
            if not bool(bad.any()):
                break
            unint[bad] = torch.randint(0, self.num_items, (int(bad.sum()),), device=users.device)
        return inter, unint

    def forward(self, batch, student, teachers):
        users = batch["x"]
        inter, unint = self.sample(users)
        t = tables_of(student)
        return {"rrd": rrd_loss(score(t, users, inter), score(t, users, unint))}
