"""Distillation Experts: student embeddings are mapped into the teacher's space by a mixture of
expert MLPs, one expert chosen per embedding by a Gumbel-softmax over a selection network that
reads the teacher's embedding; the student (and projector) minimise |e_t - P(e_s)|^2.

Every projector method logs the preference-inconsistency rate: over uniformly drawn item
pairs (i, j) of batch users, the fraction with (r̂_ui - r̂_uj)(r_ui - r_uj) < 0, where r uses
the student's raw embeddings and r̂ the projected ones (experts chosen by the selector's argmax,
so the measurement itself is not random)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kdlab.methods.base import register_method
from kdlab.methods.rank_utils import RankingMethod, tables_of
from kdlab.tasks.ranking_ops import Tables


class ExpertProjector(nn.Module):
    """E experts d_s -> (d_s+d_t)/2 -> d_t, selected from the teacher embedding."""

    def __init__(self, d_s: int, d_t: int, num_experts: int):
        super().__init__()
        hidden = (d_s + d_t) // 2
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(d_s, hidden), nn.ReLU(), nn.Linear(hidden, d_t)) for _ in range(num_experts)
        )
        self.selector = nn.Linear(d_t, num_experts)

    def gates(self, e_t: Tensor, tau: float, sample: bool) -> Tensor:
        logits = self.selector(e_t)
        if sample:
            return F.gumbel_softmax(logits, tau=tau, hard=True)  # one expert, straight-through gradient
        return F.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)

    def forward(self, e_s: Tensor, e_t: Tensor, tau: float = 1.0, sample: bool = True) -> Tensor:
        g = self.gates(e_t, tau, sample)
        outs = torch.stack([ex(e_s) for ex in self.experts], dim=-2)  # (..., E, d_t)
        return (g.unsqueeze(-1) * outs).sum(-2)


def de_loss(teacher: Tensor, projected: Tensor) -> Tensor:
    """|e_t - P(e_s)|^2 summed over dimensions, mean over rows."""
    return (teacher - projected).pow(2).sum(-1).mean()


def inconsistent_pairs(r_i: Tensor, r_j: Tensor, rh_i: Tensor, rh_j: Tensor) -> Tensor:
    """Number of pairs whose raw and projected preferences disagree in order."""
    return ((rh_i - rh_j) * (r_i - r_j) < 0).sum()


@register_method(
    "de",
    "Distillation Experts: Gumbel-selected mixture of expert projectors, lam*|e_t - P(e_s)|^2 on batch users and items",
    "Kang et al., CIKM 2020, arXiv:2009.05711 (DE-RRD)",
)
class DE(RankingMethod):
    class Params(RankingMethod.Params):
        lam: float = Field(0.01, ge=0)
        num_experts: int = Field(5, ge=1)
        gumbel_tau: float = Field(1.0, gt=0)
        incons_pairs: int = Field(20, ge=1)  # uniform item pairs per user for the logged rate

    def build(self, student, teachers):
        d_s = student.features["user"].shape[-1]
        d_t = teachers[0].features["user"].shape[-1]
        self.proj_user = ExpertProjector(d_s, d_t, self.params.num_experts)
        self.proj_item = ExpertProjector(d_s, d_t, self.params.num_experts)
        self._incons = [0.0, 0.0]

    def project(self, s: Tables, t: Tables, users: Tensor, items: Tensor, sample: bool = True, detach: bool = False):
        """(P(e_u) (B, d_t), P(e_i) items.shape + (d_t,)) for batch users and items."""
        # Project each distinct user / item once (batches repeat items a lot), then gather.
        tau = self.params.gumbel_tau
        out = []
        for ids, s_tab, t_tab, proj in ((users, s.users, t.users, self.proj_user), (items, s.items, t.items, self.proj_item)):
            uniq, inv = torch.unique(ids, return_inverse=True)
            e = s_tab[uniq].detach() if detach else s_tab[uniq]
            out.append(proj(e, t_tab[uniq], tau, sample)[inv])
        return out[0], out[1]

    def de_term(self, batch, s: Tables, t: Tables) -> Tensor:
        users = batch["x"]
        items = torch.cat([batch["item"], torch.randint(0, self.num_items, batch["item"].shape, device=users.device)])
        pu, pi = self.project(s, t, users, items)
        return de_loss(t.users[users], pu) + de_loss(t.items[items], pi)

    @torch.no_grad()
    def record_inconsistency(self, users: Tensor, s: Tables, t: Tables) -> None:
        users = users[:64]  # a sample of the batch is enough for a rate
        n = self.params.incons_pairs
        ij = torch.randint(0, self.num_items, (len(users), 2 * n), device=users.device)
        pu, pij = self.project(s, t, users, ij, sample=False)
        r = torch.einsum("bd,bnd->bn", s.users[users], s.items[ij])
        rh = torch.einsum("bd,bnd->bn", pu, pij)
        self._incons[0] += float(inconsistent_pairs(r[:, :n], r[:, n:], rh[:, :n], rh[:, n:]))
        self._incons[1] += r[:, :n].numel()

    def on_epoch_start(self, epoch):
        super().on_epoch_start(epoch)
        self._incons = [0.0, 0.0]

    def epoch_metrics(self) -> dict[str, float]:
        c, n = self._incons
        self._last = {"incons": c / n} if n else {}
        return self._last

    def summary_stats(self) -> dict[str, float]:
        """The last epoch's rate, into the run's summary."""
        return dict(getattr(self, "_last", {}))

    def forward(self, batch, student, teachers):
        s, t = tables_of(student, "student"), tables_of(teachers[0], "teacher")
        self.record_inconsistency(batch["x"], s, t)
        return {"de": self.params.lam * self.de_term(batch, s, t)}
