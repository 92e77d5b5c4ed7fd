"""Self-knowledge distillation from the output word-embedding space (Hahn & Choi 2019).

The model is its own teacher: the soft target for predicting gold token y puts mass on y and
on its K nearest neighbours in the model's own (detached) output-embedding matrix E (V × d):

    q_w ∝ exp(ê_wᵀ ê_y / τ)  for w ∈ {y} ∪ N_K(y),  0 elsewhere,   ê = e / ‖e‖,
    L = (1 − λ)·CE(y, p) + λ·H(q, p),   H(q, p) = −Σ_w q_w log p_w.

kdlab's construction (the paper has no public code): the embeddings are L2-normalised so the
similarity is a cosine in [−1, 1] and τ has the same meaning whatever the embedding scale (the
raw dot product grows with training and would sharpen q by itself); y always has similarity 1,
the largest. Neighbours are the top-K of a row of the V × V cosine matrix, y itself excluded.

How soft the target is depends on τ (and on how clustered the embeddings are): the mean gold
mass q_y over the epoch's training tokens is logged as `train_skd_gold_mass`, and the gold
mass of the whole target (1 − λ) + λ·q_y as `train_skd_target_gold_mass` (label smoothing
with ε has 1 − ε + ε/V). The last epoch's values go into the run's summary.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdlab.errors import KdlabError
from kdlab.methods.base import Method, MethodParams, Needs, register_method
from kdlab.models.lm_base import output_embedding_of


def embedding_neighbours(emb: Tensor, k: int, rows: Optional[Tensor] = None, chunk: int = 1024) -> Tensor:
    """Indices (R, k) of the k most cosine-similar words to each word in `rows` (default: all
    V), the word itself excluded; computed in row chunks so the V × V matrix is never whole."""
    e = F.normalize(emb.detach().float(), dim=1)
    rows = torch.arange(len(e), device=e.device) if rows is None else rows
    out = []
    for i in range(0, len(rows), chunk):
        r = rows[i : i + chunk]
        sim = e[r] @ e.T
        sim[torch.arange(len(r), device=e.device), r] = float("-inf")
        out.append(sim.topk(k, dim=1).indices)
    return torch.cat(out) if out else torch.zeros(0, k, dtype=torch.long, device=e.device)


def skd_targets(emb: Tensor, y: Tensor, k: int, tau: float, neighbours: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Support and weights of q for flat gold tokens y (N,): indices (N, k+1), gold first, and
    probabilities (N, k+1). Work is done once per distinct gold token in the batch.
    `neighbours` (V, k) reuses a precomputed neighbour table (refresh per epoch)."""
    e = F.normalize(emb.detach().float(), dim=1)
    uniq, inv = torch.unique(y, return_inverse=True)
    nb = embedding_neighbours(e, k, uniq) if neighbours is None else neighbours[uniq]
    support = torch.cat([uniq[:, None], nb], dim=1)  # (U, k+1)
    sim = (e[support] * e[uniq][:, None, :]).sum(-1)  # cosines; 1 for the gold column
    q = torch.softmax(sim / tau, dim=1)
    return support[inv], q[inv]


def skd_loss(logits: Tensor, y: Tensor, support: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
    """Mean token CE(y, p) and mean H(q, p) for logits (..., V) and gold y (...)."""
    logp = F.log_softmax(logits.flatten(0, -2).float(), dim=-1)
    y = y.flatten()
    ce = -logp.gather(1, y[:, None]).mean()
    h = -(q * logp.gather(1, support)).sum(1).mean()
    return ce, h


@register_method(
    "skd_nlp",
    "self-KD from the output-embedding space: soft targets on the gold token and its K nearest "
    "output embeddings, (1-λ)·CE + λ·H(q,p), λ optionally ramped (no teacher)",
    "Hahn & Choi 2019, arXiv:1908.01851",
)
class SelfKnowledgeNLP(Method):
    uses_teacher = False

    class Params(MethodParams):
        lam: float = Field(0.5, ge=0, le=1)  # weight of H(q, p); 1 − lam on CE
        k: int = Field(8, ge=1)  # neighbours besides the gold token
        tau: float = Field(0.1, gt=0)  # temperature on cosine similarities
        ramp_epochs: int = Field(0, ge=0)  # λ_e = lam·min(1, e / ramp_epochs); 0: constant lam
        # step: neighbours of the batch's distinct gold tokens from the current embeddings,
        # every step (U × V cosines, U ≤ B·T); epoch: a V × k table from the V × V cosines at
        # the first step of each epoch (cheaper once an epoch has more than ~V/U steps; the
        # neighbour sets then lag the embeddings by up to an epoch; q's weights stay current).
        refresh: Literal["step", "epoch"] = "step"

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        # A reference, not a submodule: the student's parameters belong to the student.
        self._student = [ctx.student]
        self._table: Optional[Tensor] = None
        self._gold = [0.0, 0]  # sum of q_y over training tokens, tokens
        self._last: dict[str, float] = {}

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        self._table = None
        self._gold = [0.0, 0]

    def epoch_metrics(self) -> dict[str, float]:
        total, n = self._gold
        if not n:  # λ = 0 all epoch (ramp start): no target was built
            return {}
        lam = self.current_lambda()
        self._last = {"skd_gold_mass": total / n, "skd_target_gold_mass": 1 - lam * (1 - total / n)}
        return self._last

    def summary_stats(self) -> dict[str, float]:
        return dict(self._last)

    def current_lambda(self) -> float:
        p = self.params
        if p.ramp_epochs == 0:
            return p.lam
        return p.lam * min(1.0, self.epoch / p.ramp_epochs)

    def forward(self, batch, student, teachers):
        p = self.params
        logits = student.logits
        emb = output_embedding_of(self._student[0])
        v = logits.shape[-1]
        if emb.shape[0] != v:
            raise KdlabError(f"skd_nlp: the output embedding has {emb.shape[0]} rows but the logits have {v} classes")
        if p.k >= v:
            raise KdlabError(f"skd_nlp: k={p.k} neighbours, but the vocabulary has only {v} words; set k below {v}")
        lam = self.current_lambda()
        if lam == 0.0:  # ramp start: plain CE, no targets to build
            ce = F.cross_entropy(logits.flatten(0, -2).float(), batch["y"].flatten())
            return {"skd_ce": ce, "skd": ce.new_zeros(())}
        table = None
        if p.refresh == "epoch":
            if self._table is None:
                self._table = embedding_neighbours(emb, p.k)
            table = self._table
        support, q = skd_targets(emb, batch["y"].flatten(), p.k, p.tau, table)
        if self.training:
            self._gold[0] += float(q[:, 0].sum())
            self._gold[1] += q.shape[0]
        ce, h = skd_loss(logits, batch["y"], support, q)
        return {"skd_ce": (1 - lam) * ce, "skd": lam * h}
