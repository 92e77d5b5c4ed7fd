"""Tensor helpers for ranking over all items: embedding tables of a model, masking of seen
items through the train CSR, top-k of unseen items in user chunks, and Recall/NDCG sums."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Tables:
    """A ranking model's full user and item embedding tables; score(u, i) = <users[u], items[i]>.
    Carried in `Outputs.extras["tables"]` (not a tensor, so the engine does not copy it)."""

    users: Tensor
    items: Tensor


class TrainCSR:
    """The train interactions (indptr, indices) on a device, with a membership test."""

    _cache: dict = {}

    def __init__(self, indptr: Tensor, indices: Tensor, num_items: int):
        self.indptr, self.indices, self.num_items = indptr, indices, num_items
        users = torch.repeat_interleave(torch.arange(len(indptr) - 1, device=indptr.device), indptr.diff())
        self.keys = users * num_items + indices  # sorted, since rows are sorted by user then item

    @classmethod
    def of(cls, data, device) -> "TrainCSR":
        key = (id(data.meta["train_indices"]), str(device))
        if key not in cls._cache:
            cls._cache.clear()  # one dataset at a time is enough
            cls._cache[key] = cls(
                data.meta["train_indptr"].to(device), data.meta["train_indices"].to(device), data.model_args["num_items"]
            )
        return cls._cache[key]

    def rows(self, users: Tensor) -> tuple[Tensor, Tensor]:
        """(row position in `users`, item) of every train interaction of the given users."""
        lo, hi = self.indptr[users], self.indptr[users + 1]
        counts = hi - lo
        row = torch.repeat_interleave(torch.arange(len(users), device=users.device), counts)
        offs = torch.arange(int(counts.sum()), device=users.device) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
        return row, self.indices[torch.repeat_interleave(lo, counts) + offs]

    def contains(self, users: Tensor, items: Tensor) -> Tensor:
        """Whether (users[k], items[k]) is a train interaction (broadcast shapes)."""
        q = (users * self.num_items + items).reshape(-1)
        pos = torch.searchsorted(self.keys, q).clamp(max=max(len(self.keys) - 1, 0))
        hit = self.keys[pos] == q if len(self.keys) else torch.zeros_like(q, dtype=torch.bool)
        return hit.reshape(torch.broadcast_shapes(users.shape, items.shape))


def mask_items(scores: Tensor, rows: Tensor, items: Tensor) -> Tensor:
    scores[rows, items] = float("-inf")
    return scores


def padded_pairs(mat: Tensor) -> tuple[Tensor, Tensor]:
    """(row, value) of the non-negative entries of a -1-padded matrix."""
    valid = mat >= 0
    rows = torch.arange(len(mat), device=mat.device)[:, None].expand_as(mat)
    return rows[valid], mat[valid]


def unseen_scores(tables: Tables, users: Tensor, csr: TrainCSR) -> Tensor:
    """Scores of `users` over all items, train items set to -inf."""
    scores = tables.users[users].float() @ tables.items.float().T
    return mask_items(scores, *csr.rows(users))


def topk_unseen(tables: Tables, csr: TrainCSR | None, k: int, chunk: int = 1024) -> Tensor:
    """(num_users, k) items of each user's top-k among items not seen in training, best first
    (csr None: among all items, train items included)."""
    n = tables.users.shape[0]
    k = min(k, tables.items.shape[0])
    out = []
    with torch.no_grad():
        for s in range(0, n, chunk):
            users = torch.arange(s, min(s + chunk, n), device=tables.users.device)
            scores = unseen_scores(tables, users, csr) if csr is not None else tables.users[users].float() @ tables.items.float().T
            out.append(scores.topk(k, dim=1).indices)
    return torch.cat(out)


def ranking_sums(scores: Tensor, pos: Tensor, ks: tuple[int, ...] = (10, 20)) -> dict[str, Tensor]:
    """Summed Recall@K and NDCG@K of a batch of users.

    scores: (B, N) with excluded items already -inf; pos: (B, L) held-out items padded with -1.
    Recall@K = hits in the top K / number of held-out items (as in LightGCN's evaluation);
    NDCG@K = DCG / ideal DCG with min(K, number of held-out items) relevant positions.
    """
    b, n = scores.shape
    kmax = min(max(ks), n)
    top = scores.topk(kmax, dim=1).indices
    target = torch.zeros(b, n, dtype=torch.bool, device=scores.device)
    rows, items = padded_pairs(pos)
    target[rows, items] = True
    hit = target.gather(1, top).float()
    npos = (pos >= 0).sum(1).clamp(min=1).float()
    disc = 1.0 / torch.log2(torch.arange(2, kmax + 2, device=scores.device, dtype=torch.float32))
    out = {}
    for k in ks:
        kk = min(k, kmax)
        h = hit[:, :kk]
        ideal = torch.cumsum(disc, 0)[(npos.clamp(max=kk) - 1).long()]
        out[f"recall{k}"] = (h.sum(1) / npos).sum()
        out[f"ndcg{k}"] = ((h * disc[:kk]).sum(1) / ideal).sum()
    out["n"] = torch.tensor(b, device=scores.device)
    return out


def rank_biased_weights(m: int, temperature: float, device=None) -> Tensor:
    """exp(-r/T) for ranks r = 1..m (unnormalised)."""
    r = torch.arange(1, m + 1, dtype=torch.float32, device=device)
    return torch.exp(-r / temperature)


def sample_ranks(batch: int, m: int, n: int, temperature: float, replacement: bool, device=None) -> Tensor:
    """(batch, n) ranks in 0..m-1 drawn with probability proportional to exp(-(r+1)/T)."""
    w = rank_biased_weights(m, temperature, device).expand(batch, m)
    return torch.multinomial(w, n, replacement=replacement)


def uniform_negatives(users: Tensor, n: int, csr: TrainCSR, rounds: int = 20) -> Tensor:
    """(B, n) items drawn uniformly among the items each user has not interacted with in training
    (rejection in tensors; after `rounds` redraws any leftover collision is kept, which only
    happens for users who have seen almost every item)."""
    neg = torch.randint(0, csr.num_items, (len(users), n), device=users.device)
    for _ in range(rounds):
        bad = csr.contains(users[:, None], neg)
        if not bool(bad.any()):
            break
        neg[bad] = torch.randint(0, csr.num_items, (int(bad.sum()),), device=users.device)
    return neg


__all__ = [
    "Tables", "TrainCSR", "topk_unseen", "ranking_sums", "unseen_scores", "sample_ranks",
    "rank_biased_weights", "uniform_negatives", "padded_pairs", "mask_items",
]
