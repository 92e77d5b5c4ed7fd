"""Implicit-feedback interactions -> a ranking DataBundle: k-core filtering, a seeded per-user
train/val/test split, the train-interaction CSR (for masking seen items and for negative
sampling) and LightGCN's normalised user-item graph.

Splits, as tensors:
- train: one row per interaction, `x` = user id, `item` = item id;
- val / test: one row per user with at least one held-out item, `x` = user id, `pos` = the
  held-out items padded with -1, `seen` = further items to exclude from the ranking besides
  the training items (for test: the user's validation items; for val: none), padded with -1.
"""

from __future__ import annotations

import numpy as np
import torch

from kdlab.data.base import DataBundle, Split
from kdlab.errors import KdlabError


def k_core(users: np.ndarray, items: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Repeatedly drop users and items with fewer than k interactions until none is left."""
    if k <= 1:
        return users, items
    while True:
        uc = np.bincount(users)
        ic = np.bincount(items)
        keep = (uc[users] >= k) & (ic[items] >= k)
        if keep.all():
            return users, items
        users, items = users[keep], items[keep]
        if len(users) == 0:
            return users, items


def remap(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous 0..n-1 ids; returns (new ids, original id of each new id)."""
    uniq, inv = np.unique(ids, return_inverse=True)
    return inv.astype(np.int64), uniq


def per_user_split(users: np.ndarray, seed: int, val_fraction: float, test_fraction: float) -> np.ndarray:
    """Part of each interaction: 0 train, 1 val, 2 test. Each user's interactions are shuffled
    with the seed; round(n*test) go to test, round(n*val) to val, at least one stays in train."""
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(users)), users))  # by user, random within a user
    counts = np.bincount(users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    su = users[order]
    rank = np.arange(len(users)) - starts[su]
    n = counts[su]
    n_test = np.minimum(np.rint(n * test_fraction), n - 1)
    n_val = np.minimum(np.rint(n * val_fraction), n - 1 - n_test)
    part_sorted = np.where(rank < n_test, 2, np.where(rank < n_test + n_val, 1, 0))
    part = np.empty(len(users), dtype=np.int64)
    part[order] = part_sorted
    return part


def csr(users: np.ndarray, items: np.ndarray, num_users: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(indptr, indices) of the user x item interaction matrix, items sorted within a row."""
    order = np.lexsort((items, users))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(users, minlength=num_users))])
    return torch.as_tensor(indptr, dtype=torch.int64), torch.as_tensor(items[order], dtype=torch.int64)


def padded(users: np.ndarray, items: np.ndarray, rows: np.ndarray) -> torch.Tensor:
    """Items of each user in `rows` as a (len(rows), max count) matrix padded with -1."""
    keep = np.isin(users, rows)
    users, items = users[keep], items[keep]
    r = np.searchsorted(rows, users)  # rows is sorted and unique
    counts = np.zeros(len(rows), dtype=np.int64)
    np.add.at(counts, r, 1)
    width = int(counts.max()) if len(counts) else 0
    out = np.full((len(rows), width), -1, dtype=np.int64)
    order = np.argsort(r, kind="stable")
    r_sorted = r[order]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    col = np.arange(len(r_sorted)) - starts[r_sorted]
    out[r_sorted, col] = items[order]
    return torch.as_tensor(out)


def normalized_adjacency(users: np.ndarray, items: np.ndarray, num_users: int, num_items: int) -> torch.Tensor:
    """D^-1/2 A D^-1/2 of the bipartite graph (users first, then items), as sparse COO."""
    n = num_users + num_items
    rows = np.concatenate([users, items + num_users])
    cols = np.concatenate([items + num_users, users])
    deg = np.bincount(rows, minlength=n).astype(np.float64)
    inv = np.where(deg > 0, deg ** -0.5, 0.0)
    vals = inv[rows] * inv[cols]
    idx = torch.as_tensor(np.stack([rows, cols]), dtype=torch.int64)
    return torch.sparse_coo_tensor(idx, torch.as_tensor(vals, dtype=torch.float32), (n, n), check_invariants=True).coalesce()


def ranking_bundle(
    users: np.ndarray,
    items: np.ndarray,
    *,
    seed: int,
    k_core_min: int,
    val_fraction: float,
    test_fraction: float,
    source: str,
    min_interactions: int = 10,
) -> DataBundle:
    """Deduplicate, k-core filter, remap ids, split per user and pack the tensors."""
    if not (0 <= val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise KdlabError(f"val_fraction and test_fraction must be in [0, 1) and sum below 1 (got {val_fraction}, {test_fraction})")
    before = len(users)
    pairs = np.unique(np.stack([users, items], 1), axis=0) if len(users) else np.zeros((0, 2), np.int64)
    users, items = pairs[:, 0], pairs[:, 1]
    users, _ = remap(users)
    items, _ = remap(items)
    nu0, ni0 = (users.max() + 1 if len(users) else 0), (items.max() + 1 if len(items) else 0)
    users, items = k_core(users, items, k_core_min)
    if len(users) < min_interactions:
        raise KdlabError(
            f"{source}: {len(users)} interactions remain after {k_core_min}-core filtering (from {before} rows, "
            f"{nu0} users, {ni0} items); need at least {min_interactions}. Lower k_core or use more data."
        )
    users, user_ids = remap(users)
    items, item_ids = remap(items)
    num_users, num_items = len(user_ids), len(item_ids)
    part = per_user_split(users, seed, val_fraction, test_fraction)
    tr, va, te = part == 0, part == 1, part == 2
    indptr, indices = csr(users[tr], items[tr], num_users)

    def eval_split(mask, seen_mask) -> Split:
        rows = np.unique(users[mask])
        seen = padded(users[seen_mask], items[seen_mask], rows) if seen_mask is not None else torch.full((len(rows), 0), -1, dtype=torch.int64)
        return Split({"x": torch.as_tensor(rows, dtype=torch.int64), "pos": padded(users[mask], items[mask], rows), "seen": seen})

    train = Split({"x": torch.as_tensor(users[tr], dtype=torch.int64), "item": torch.as_tensor(items[tr], dtype=torch.int64)})
    adjacency = normalized_adjacency(users[tr], items[tr], num_users, num_items)
    return DataBundle(
        train=train,
        val=eval_split(va, None),
        test=eval_split(te, va),
        num_classes=num_items,
        input_shape=(),
        task="ranking",
        model_args={"num_users": num_users, "num_items": num_items, "adjacency": adjacency},
        meta={
            "train_indptr": indptr,
            "train_indices": indices,
            "item_popularity": torch.as_tensor(np.bincount(items[tr], minlength=num_items)),
            "user_ids": user_ids,
            "item_ids": item_ids,
            "source": source,
            "interactions": int(len(users)),
        },
    )
