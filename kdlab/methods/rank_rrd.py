"""Relaxed Ranking Distillation: a list-wise (Plackett-Luce) loss that keeps the order of K
"interesting" items sampled from the teacher's top-M above L uninteresting ones, without
ordering the uninteresting items among themselves.

Sampling as in the DE-RRD code: each epoch, every user gets K interesting items (ranks drawn
∝ exp(-r/T) from the teacher's top-M unseen items, without replacement, kept in teacher order)
and L uninteresting ones, uniform over the items outside the top-M and outside the user's own
training items; a batch's loss is over its distinct users."""

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
    "Relaxed Ranking Distillation: K items from the teacher's top-M (∝ exp(-r/T), in teacher order) above L uniform unseen others",
    "Kang et al., CIKM 2020, arXiv:2009.05711 (DE-RRD)",
)
class RRD(RankingMethod):
    class Params(RankingMethod.Params):
        K: int = Field(10, ge=1)
        L: int = Field(100, ge=1)  # uninteresting items per user (at most the items outside top-M and train)
        M: int = Field(100, ge=1)
        T: float = Field(10.0, gt=0)

    def build(self, student, teachers):
        self.compute_top(tables_of(teachers[0], "teacher"), self.params.M)

    def sample(self, users: Tensor) -> tuple[Tensor, Tensor]:
        """(interesting (B, K) in teacher order, uninteresting (B, L) uniform over the items that
        are neither in the teacher's top-M nor among the user's own training items)."""
        p = self.params
        ranks, _ = self.draw_from_top(users, min(p.K, self._top.shape[1]), p.T, replacement=False)
        ranks = ranks.sort(1).values  # keep the teacher's order
        top = self._top[users]
        inter = top.gather(1, ranks)
        # The user's training items are positives, not "uninteresting" ones: pushing them below
        # the interesting items would fight BPR (the official DE-RRD code masks both sets). Drawn
        # without replacement from a dense (users, items) mask, as that code does; the tiny
        # floor only matters for a user with fewer than L allowed items, who then gets some others.
        allowed = torch.ones(len(users), self.num_items, device=users.device)
        rows = torch.arange(len(users), device=users.device)[:, None].expand_as(top)
        allowed[rows, top] = 0.0
        allowed[self.csr(users.device).rows(users)] = 0.0
        unint = torch.multinomial(allowed + 1e-12, p.L, replacement=False)
        return inter, unint

    def on_epoch_start(self, epoch):
        """Draw every user's items once an epoch, as the DE-RRD code does (also far cheaper
        than drawing them for each batch)."""
        super().on_epoch_start(epoch)
        n = self._top.shape[0]
        chunk = max(1, 2**24 // self.num_items)  # users per dense (users, items) mask: <= 64 MB
        parts = [self.sample(torch.arange(a, min(a + chunk, n), device=self._top.device)) for a in range(0, n, chunk)]
        self._inter, self._unint = (torch.cat(x) for x in zip(*parts))

    def forward(self, batch, student, teachers):
        users = batch["x"].unique()  # each user of the batch once, as in the DE-RRD code
        t = tables_of(student)
        return {"rrd": rrd_loss(score(t, users, self._inter[users]), score(t, users, self._unint[users]))}
