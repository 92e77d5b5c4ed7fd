"""Relaxed Ranking Distillation: a list-wise (Plackett-Luce) loss that keeps the order of K
"interesting" items sampled from the teacher's top-M above L uninteresting ones, without
ordering the uninteresting items among themselves.

Sampling as in the DE-RRD code: each epoch, every user gets K interesting items (ranks drawn
∝ exp(-r/T) from the teacher's top-M unseen items, without replacement, kept in teacher order)
and L uninteresting ones, uniform without replacement over the items outside the top-M and
outside the user's own training items; a batch's loss is over its distinct users.
`redraw: batch` draws from the same law afresh for every batch row instead (the uninteresting
items by rejection, which needs far fewer random numbers than a key per item per row)."""

from __future__ import annotations

from typing import Literal, Optional

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
        # epoch: every user's items drawn once an epoch, loss over the batch's distinct users (the
        # DE-RRD code); batch: fresh items for every batch row (users repeat with their activity).
        redraw: Literal["epoch", "batch"] = "epoch"

    def build(self, student, teachers):
        self.compute_top(tables_of(teachers[0], "teacher"), self.params.M)

    def sample(self, users: Tensor, by_rejection: bool = False) -> tuple[Tensor, Tensor]:
        """(interesting (B, K) in teacher order, uninteresting (B, L) uniform over the items that
        are neither in the teacher's top-M nor among the user's own training items)."""
        p = self.params
        ranks, _ = self.draw_from_top(users, min(p.K, self._top.shape[1]), p.T, replacement=False)
        ranks = ranks.sort(1).values  # keep the teacher's order
        top = self._top[users]
        inter = top.gather(1, ranks)
        # The user's training items are positives, not "uninteresting" ones: pushing them below
        # the interesting items would fight BPR (the official DE-RRD code masks both sets).
        excluded = torch.zeros(len(users), self.num_items, dtype=torch.bool, device=users.device)
        excluded.scatter_(1, top, True)
        r, i = self.csr(users.device).rows(users)
        excluded[r, i] = True
        if by_rejection:  # at least this many allowed items per row: top-M and train are disjoint
            allowed = self.num_items - top.shape[1] - int(torch.bincount(r, minlength=len(users)).max())
            return inter, self.uninteresting_by_rejection(excluded, allowed)
        return inter, self.uninteresting_by_keys(excluded)

    def uninteresting_by_keys(self, excluded: Tensor) -> Tensor:
        """Uniform without replacement over the allowed items, as the DE-RRD code draws: the
        top-L of iid uniform keys; excluded items get keys below every allowed one, so only a
        user with fewer than L allowed items gets some of them."""
        keys = torch.rand(excluded.shape, device=excluded.device)
        keys[excluded] -= 2.0
        return keys.topk(self.params.L, dim=1).indices

    def uninteresting_by_rejection(self, excluded: Tensor, allowed: Optional[int] = None) -> Tensor:
        """The same law for a fraction of the work (`redraw: batch` draws for every batch row):
        uniform draws over all items, dropping excluded and repeated ones, the first L kept -
        each kept item is uniform over the allowed items not yet kept, i.e. drawing without
        replacement. Rows left with fewer than L (few allowed items, or bad luck) use the keys."""
        b, n = excluded.shape
        L, dev = self.params.L, excluded.device
        if allowed is None:  # the fewest allowed items of a row
            allowed = int((n - excluded.sum(1)).min())
        c = min(int(1.5 * L * n / max(allowed, 1)) + 32, 4 * n)  # expected need ~L n / allowed
        cand = torch.randint(0, n, (b, c), device=dev)
        pos = torch.arange(c, dtype=torch.int32, device=dev).expand(b, c)  # int32: a third of the fill
        first = torch.full((b, n), c, dtype=torch.int32, device=dev).scatter_reduce(1, cand, pos, "amin")
        keep = ~excluded.gather(1, cand) & (first.gather(1, cand) == pos)
        rank = keep.cumsum(1)
        rows, cols = (keep & (rank <= L)).nonzero(as_tuple=True)
        out = torch.empty(b, L, dtype=torch.long, device=dev)
        out[rows, rank[rows, cols] - 1] = cand[rows, cols]
        short = rank[:, -1] < L
        if bool(short.any()):
            out[short] = self.uninteresting_by_keys(excluded[short])
        return out

    def on_epoch_start(self, epoch):
        """redraw=epoch: draw every user's items once an epoch, as the DE-RRD code does."""
        super().on_epoch_start(epoch)
        if self.params.redraw != "epoch":
            return
        n = self._top.shape[0]
        chunk = max(1, 2**24 // self.num_items)  # users per dense (users, items) mask: <= 64 MB
        parts = [self.sample(torch.arange(a, min(a + chunk, n), device=self._top.device)) for a in range(0, n, chunk)]
        self._inter, self._unint = (torch.cat(x) for x in zip(*parts))

    def forward(self, batch, student, teachers):
        t = tables_of(student)
        if self.params.redraw == "batch":
            users = batch["x"]
            inter, unint = self.sample(users, by_rejection=True)
        else:
            users = batch["x"].unique()  # each user of the batch once, as in the DE-RRD code
            inter, unint = self._inter[users], self._unint[users]
        return {"rrd": rrd_loss(score(t, users, inter), score(t, users, unint))}
