"""Shared pieces of the ranking-distillation methods: tables from outputs, the train CSR,
the teacher's top-M unseen items (computed once: the teacher is frozen), rank-biased draws."""

from __future__ import annotations

import torch
from torch import Tensor

from kdlab.errors import KdlabError
from kdlab.methods.base import Method, Outputs
from kdlab.tasks.ranking_ops import Tables, TrainCSR, sample_ranks, topk_unseen


def tables_of(out: Outputs, who: str = "model") -> Tables:
    t = out.extras.get("tables")
    if t is None:
        raise KdlabError(f"the {who} gave no embedding tables: ranking methods need ranking data and a recommender backbone")
    return t


def score(t: Tables, users: Tensor, items: Tensor) -> Tensor:
    """<e_u, e_i> for users (B,) and items (B,) or (B, n) -> (B,) or (B, n)."""
    u = t.users[users]
    if items.dim() == 1:
        return (u * t.items[items]).sum(-1)
    return torch.einsum("bd,bnd->bn", u, t.items[items])


class RankingMethod(Method):
    """Base: keeps the data and the top-M list of a guide model (the teacher unless a subclass
    refreshes it from the student)."""

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        if ctx.data is None or getattr(ctx.data, "task", None) != "ranking":
            raise KdlabError(f"method '{self.name}' is for ranking data (interactions, recsys_synthetic)")
        self._data = ctx.data
        self._student_ref = [ctx.student]  # a list: not a submodule, so not saved twice
        self.num_items = ctx.data.model_args["num_items"]
        self._top: Tensor | None = None

    def csr(self, device) -> TrainCSR:
        return TrainCSR.of(self._data, device)

    def compute_top(self, t: Tables, m: int, mask_train: bool = True) -> None:
        """Each user's top-m items among those unseen in training (mask_train=False: among all
        items), by the given tables."""
        self._top = self.top_items(t, m, mask_train)

    def top_items(self, t: Tables, m: int, mask_train: bool = True) -> Tensor:
        with torch.no_grad():
            csr = self.csr(t.users.device) if mask_train else None
            return topk_unseen(Tables(t.users.detach(), t.items.detach()), csr, m)

    def student_tables(self) -> Tables:
        model = self._student_ref[0]
        with torch.no_grad():
            u, i = model.tables()
        return Tables(u.detach(), i.detach())

    def draw_from_top(self, users: Tensor, n: int, temperature: float, replacement: bool) -> tuple[Tensor, Tensor]:
        """n items per user from the guide's top-M with P(rank r) ∝ exp(-r/T); (ranks, items)."""
        top = self._top[users]
        ranks = sample_ranks(len(users), top.shape[1], n, temperature, replacement, users.device)
        return ranks, top.gather(1, ranks)
