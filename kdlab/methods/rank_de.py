"""Distillation Experts: student embeddings are mapped into the teacher's space by a mixture of
expert MLPs, one expert chosen per embedding by a Gumbel-softmax over a selection network that
reads the teacher's embedding; the student (and projector) minimise |e_t - P(e_s)|^2.

The Gumbel-softmax temperature is annealed as in the DE-RRD code (and the PCKD code base):
tau_e = tau_0 * (tau_end / tau_0)^(e / E) at epoch e of E, floored at tau_end (1 -> 1e-10), so
the gates start as a soft mixture of experts and end as a hard choice of one.

Every projector method logs two preference-inconsistency rates: the fraction of item pairs
(i, j) of batch users with (r̂_ui - r̂_uj)(r_ui - r_uj) < 0, where r uses the student's raw
embeddings and r̂ the projected ones (experts chosen by the selector's argmax, so the
measurement itself is not random), over uniformly drawn pairs (`incons`) and over pairs drawn
uniformly from the teacher's top-M unseen items (`incons_top`), where PCKD claims its effect."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from typing import Optional

from pydantic import Field
from torch import Tensor, nn

from kdlab.methods.base import register_method
from kdlab.methods.rank_utils import RankingMethod, tables_of
from kdlab.tasks.ranking_ops import Tables, uniform_negatives


class ExpertProjector(nn.Module):
    """E experts d_s -> (d_s+d_t)/2 -> d_t, selected from the teacher embedding."""

    def __init__(self, d_s: int, d_t: int, num_experts: int):
        super().__init__()
        hidden = (d_s + d_t) // 2
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(d_s, hidden), nn.ReLU(), nn.Linear(hidden, d_t)) for _ in range(num_experts)
        )
        self.selector = nn.Linear(d_t, num_experts)

    def gates(self, e_t: Tensor, tau: float, sample: bool, hard: bool = False) -> Tensor:
        logits = self.selector(e_t)
        if sample:
            # softmax((logits + g) / tau): the DE-RRD code's softmax((log softmax(logits) + g) / T),
            # the log-normaliser being a constant per row; hard: one-hot forward, straight-through.
            return F.gumbel_softmax(logits, tau=tau, hard=hard)
        return F.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)

    def forward(self, e_s: Tensor, e_t: Tensor, tau: float = 1.0, sample: bool = True, hard: bool = False) -> Tensor:
        g = self.gates(e_t, tau, sample, hard)
        # Soft or one-hot gates: a gate exactly 0 adds 0 to its row and passes 0 gradient back
        # (softmax's Jacobian scales each entry by its own gate), so each expert can run only on
        # the rows it is gated into: the same sum and gradients, a fraction of the work once the
        # annealed temperature has made the gates one-hot. Straight-through (hard) gates need
        # every expert's output for the selector's gradient, gate 0 or not.
        if (sample and hard) or bool((g != 0).sum() * 2 > g.numel()):
            outs = torch.stack([ex(e_s) for ex in self.experts], dim=-2)  # (..., E, d_t)
            return (g.unsqueeze(-1) * outs).sum(-2)
        flat_g, flat_e = g.reshape(-1, g.shape[-1]), e_s.reshape(-1, e_s.shape[-1])
        out = flat_e.new_zeros(len(flat_e), self.selector.in_features)
        for k, ex in enumerate(self.experts):
            rows = flat_g[:, k].nonzero().squeeze(1)  # may be empty: the expert still gets a 0 gradient
            out = out.index_add(0, rows, flat_g[rows, k : k + 1] * ex(flat_e[rows]))
        return out.reshape(*e_s.shape[:-1], -1)


def de_loss(teacher: Tensor, projected: Tensor) -> Tensor:
    """|e_t - P(e_s)|^2 summed over dimensions, mean over rows."""
    return (teacher - projected).pow(2).sum(-1).mean()


def gumbel_temperature(epoch: int, epochs: int, start: float, end: Optional[float]) -> float:
    """DE-RRD's schedule: start * (end / start)^(epoch / epochs), floored at end; end None: start."""
    if end is None:
        return start
    return max(start * (end / start) ** (epoch / max(epochs, 1)), end)


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
        gumbel_tau: float = Field(1.0, gt=0)  # the temperature at epoch 0
        # Annealed towards this over the run (DE-RRD: 1 -> 1e-10); null keeps gumbel_tau fixed.
        gumbel_tau_end: Optional[float] = Field(1e-10, gt=0)
        gumbel_hard: bool = False  # one-hot gates with a straight-through gradient (not in DE-RRD)
        incons_pairs: int = Field(20, ge=1)  # item pairs per user for each logged rate
        incons_top: int = Field(100, ge=2)  # M of the teacher's top-M list for `incons_top`
        # Measure the rates on every n-th batch of an epoch (the measurement projects 2 x 64
        # users' 40 items each time: about as much work as the DE term itself).
        incons_every: int = Field(1, ge=1)

    def build(self, student, teachers):
        d_s = student.features["user"].shape[-1]
        d_t = teachers[0].features["user"].shape[-1]
        self.proj_user = ExpertProjector(d_s, d_t, self.params.num_experts)
        self.proj_item = ExpertProjector(d_s, d_t, self.params.num_experts)
        self._teacher_top = self.top_items(tables_of(teachers[0], "teacher"), self.params.incons_top)
        self._incons = [0.0] * 4
        self._batches = 0
        self.tau = gumbel_temperature(0, self.total_epochs, self.params.gumbel_tau, self.params.gumbel_tau_end)

    def project(self, s: Tables, t: Tables, users: Tensor, items: Tensor, sample: bool = True, detach: bool = False):
        """(P(e_u) (B, d_t), P(e_i) items.shape + (d_t,)) for batch users and items."""
        # Project each distinct user / item once (batches repeat items a lot), then gather.
        out = []
        for ids, s_tab, t_tab, proj in ((users, s.users, t.users, self.proj_user), (items, s.items, t.items, self.proj_item)):
            uniq, inv = torch.unique(ids, return_inverse=True)
            e = s_tab[uniq].detach() if detach else s_tab[uniq]
            out.append(proj(e, t_tab[uniq], self.tau, sample, self.params.gumbel_hard)[inv])
        return out[0], out[1]

    def de_term(self, batch, s: Tables, t: Tables) -> Tensor:
        """Over the batch's distinct users, and its distinct positives and as many distinct
        unseen uniform negatives (items weighted half each), as the DE-RRD / PCKD code does."""
        users = batch["x"]
        neg = uniform_negatives(users, 1, self.csr(users.device)).flatten()
        u, pos, neg = users.unique(), batch["item"].unique(), neg.unique()
        items = torch.cat([pos, neg])
        pu, pi = self.project(s, t, u, items)
        ti = t.items[items]
        return de_loss(t.users[u], pu) + 0.5 * (de_loss(ti[: len(pos)], pi[: len(pos)]) + de_loss(ti[len(pos):], pi[len(pos):]))

    @torch.no_grad()
    def inconsistency(self, users: Tensor, i: Tensor, j: Tensor, s: Tables, t: Tables) -> float:
        """Number of pairs (users[b], i[b, k], j[b, k]) ordered differently by r and r̂."""
        ij = torch.cat([i, j], 1)
        pu, pij = self.project(s, t, users, ij, sample=False)
        r = torch.einsum("bd,bnd->bn", s.users[users], s.items[ij])
        rh = torch.einsum("bd,bnd->bn", pu, pij)
        n = i.shape[1]
        return float(inconsistent_pairs(r[:, :n], r[:, n:], rh[:, :n], rh[:, n:]))

    @torch.no_grad()
    def record_inconsistency(self, users: Tensor, s: Tables, t: Tables) -> None:
        self._batches += 1
        if (self._batches - 1) % self.params.incons_every:
            return
        users = users[:64]  # a sample of the batch is enough for a rate
        n, dev = self.params.incons_pairs, users.device
        uni = torch.randint(0, self.num_items, (len(users), 2 * n), device=dev)
        top = self._teacher_top[users]
        ranks = torch.randint(0, top.shape[1], (len(users), 2 * n), device=dev)
        tops = top.gather(1, ranks)
        self._incons[0] += self.inconsistency(users, uni[:, :n], uni[:, n:], s, t)
        self._incons[2] += self.inconsistency(users, tops[:, :n], tops[:, n:], s, t)
        self._incons[1] += len(users) * n
        self._incons[3] += len(users) * n

    def on_epoch_start(self, epoch):
        super().on_epoch_start(epoch)
        self._incons = [0.0] * 4
        self._batches = 0
        self.tau = gumbel_temperature(epoch, self.total_epochs, self.params.gumbel_tau, self.params.gumbel_tau_end)

    def epoch_metrics(self) -> dict[str, float]:
        c, n, c_top, n_top = self._incons
        self._last = {"incons": c / n, "incons_top": c_top / n_top, "gumbel_tau": self.tau} if n else {}
        return self._last

    def summary_stats(self) -> dict[str, float]:
        """The last epoch's rates, into the run's summary."""
        last = getattr(self, "_last", {})
        return {k: last[k] for k in ("incons", "incons_top") if k in last}

    def forward(self, batch, student, teachers):
        s, t = tables_of(student, "student"), tables_of(teachers[0], "teacher")
        self.record_inconsistency(batch["x"], s, t)
        return {"de": self.params.lam * self.de_term(batch, s, t)}
