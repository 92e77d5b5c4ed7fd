"""Preference-Consistent KD: DE plus a regulariser that trains only the projector to keep the
order of the projected preferences r̂_ui = <P(e_u), P(e_i)> the same as that of the raw ones
r_ui = <e_u, e_i> (both the raw scores and the projector's input are detached).

Items come from p_u: the guide model's top-M items, rank r drawn ∝ exp(-r/T); `mask_train`
leaves the user's training items out of that list (the public code does not, so off by default).
`redraw: epoch` (default) draws every user's items once an epoch, as the public code does (its
Q items per user, drawn in `do_something_in_each_epoch`); `redraw: batch` draws afresh for every
row. With epoch draws the rows of one user are identical terms (same items, and projections of
distinct ids), so the loss is computed once per distinct user, weighted by its number of rows:
the mean over rows, for ~3/4 of the work.
- pair:   i, j ~ p_u;  -log sigma((r̂_ui - r̂_uj)(r_ui - r_uj)), mean over users and pairs;
- list:   Q items ~ p_u (without replacement); -sum_i softmax(r/tau)_i log softmax(r̂/tau)_i;
- hybrid: Q items ~ p_u; the list term plus `beta` times the pair term over all i<j in Q
          (the weighting is not in the public code; kdlab uses list + beta*pair, beta=1).
Total: lam * (L_DE + alpha * L_reg)."""

from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdlab.methods.base import register_method
from kdlab.methods.rank_de import DE
from kdlab.methods.rank_utils import tables_of
from kdlab.tasks.ranking_ops import Tables


def row_mean(v: Tensor, weight: Optional[Tensor]) -> Tensor:
    """Mean over rows, or weighted by `weight` (rows standing for several identical ones)."""
    return v.mean() if weight is None else (v * weight).sum() / weight.sum()


def pair_loss(r_i: Tensor, r_j: Tensor, rh_i: Tensor, rh_j: Tensor, weight: Optional[Tensor] = None) -> Tensor:
    """-log sigma((r̂_i - r̂_j)(r_i - r_j)), mean over each row's pairs, then over rows."""
    return row_mean(-F.logsigmoid((rh_i - rh_j) * (r_i - r_j)).mean(1), weight)


def list_loss(r: Tensor, rh: Tensor, tau: float, weight: Optional[Tensor] = None) -> Tensor:
    """Cross-entropy from softmax(r/tau) to softmax(r̂/tau) over each user's Q items, mean over users."""
    return row_mean(-(F.softmax(r / tau, dim=1) * F.log_softmax(rh / tau, dim=1)).sum(1), weight)


@register_method(
    "pckd",
    "Preference-Consistent KD: DE + projector-only pair/list/hybrid order regulariser on guide-sampled items",
    "Zhu & Zhang, IEEE TKDE 2025, arXiv:2311.04549",
)
class PCKD(DE):
    class Params(DE.Params):
        alpha: float = Field(0.1, ge=0)
        reg: Literal["pair", "list", "hybrid"] = "hybrid"
        guide: Literal["teacher", "student"] = "teacher"
        refresh: int = Field(5, ge=1)  # epochs between refreshes of a student guide's top-M
        M: int = Field(100, ge=2)
        T: float = Field(10.0, gt=0)
        Q: int = Field(10, ge=2)  # list / hybrid: items per user
        tau: float = Field(0.1, gt=0)  # list softmax temperature
        pairs: int = Field(10, ge=1)  # pair: pairs per user
        beta: float = Field(1.0, ge=0)  # hybrid: weight of the pair term
        mask_train: bool = False  # guide list over unseen items only (the public code ranks all items)
        redraw: Literal["epoch", "batch"] = "epoch"

    def build(self, student, teachers):
        super().build(student, teachers)
        if self.params.guide == "teacher":
            self.compute_top(tables_of(teachers[0], "teacher"), self.params.M, self.params.mask_train)

    def on_epoch_start(self, epoch):
        super().on_epoch_start(epoch)
        if self.params.guide == "student" and (epoch % self.params.refresh == 0 or self._top is None):
            self.compute_top(self.student_tables(), self.params.M, self.params.mask_train)
        if self.params.redraw == "epoch":
            self._items = self.draw_items(torch.arange(self._top.shape[0], device=self._top.device))

    def draw_items(self, users: Tensor) -> Tensor:
        """pair: 2 x `pairs` items per user (with replacement); list / hybrid: Q distinct ones."""
        p = self.params
        if p.reg == "pair":
            return self.draw_from_top(users, 2 * p.pairs, p.T, replacement=True)[1]
        return self.draw_from_top(users, min(p.Q, self._top.shape[1]), p.T, replacement=False)[1]

    def raw_and_projected(self, users: Tensor, items: Tensor, s: Tables, t: Tables) -> tuple[Tensor, Tensor]:
        """r (detached) and r̂ (graph through the projector only) for items (B, n)."""
        r = torch.einsum("bd,bnd->bn", s.users[users], s.items[items]).detach()
        pu, pi = self.project(s, t, users, items, detach=True)
        return r, torch.einsum("bd,bnd->bn", pu, pi)

    def reg_term(self, users: Tensor, s: Tables, t: Tables) -> Tensor:
        p = self.params
        w = None
        if p.redraw == "epoch":
            users, counts = users.unique(return_counts=True)
            items, w = self._items[users], counts.to(torch.float32)
        else:
            items = self.draw_items(users)
        r, rh = self.raw_and_projected(users, items, s, t)
        if p.reg == "pair":
            n = p.pairs
            return pair_loss(r[:, :n], r[:, n:], rh[:, :n], rh[:, n:], w)
        loss = list_loss(r, rh, p.tau, w)
        if p.reg == "hybrid":
            i, j = torch.triu_indices(items.shape[1], items.shape[1], 1, device=users.device)
            loss = loss + p.beta * pair_loss(r[:, i], r[:, j], rh[:, i], rh[:, j], w)
        return loss

    def forward(self, batch, student, teachers):
        s, t = tables_of(student, "student"), tables_of(teachers[0], "teacher")
        self.record_inconsistency(batch["x"], s, t)
        p = self.params
        return {"de": p.lam * self.de_term(batch, s, t), "pckd_reg": p.lam * p.alpha * self.reg_term(batch["x"], s, t)}
