"""Full-ranking metrics, seen-item masking and negative sampling against brute force."""

import math

import numpy as np
import pytest
import torch

from kdlab.data.recsys_synthetic import recsys_synthetic
from kdlab.engine.evaluation import evaluate
from kdlab.models.recsys_mf import bpr_mf
from kdlab.tasks.base import get_task
from kdlab.tasks.ranking_ops import Tables, TrainCSR, ranking_sums, topk_unseen, uniform_negatives


def brute(scores, targets, k):
    """Recall@k and NDCG@k of one user from a plain sort (excluded items already -inf)."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[:k]
    hits = [1.0 if i in targets else 0.0 for i in order]
    dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
    idcg = sum(1 / math.log2(r + 2) for r in range(min(k, len(targets))))
    return sum(hits) / len(targets), dcg / idcg


def test_ranking_sums_small_matrix():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((4, 30))
    scores[0, [3, 7]] = -np.inf
    pos = np.full((4, 5), -1)
    pos[0, :3] = [1, 2, 29]
    pos[1, :5] = [0, 5, 6, 10, 11]
    pos[2, :1] = [17]
    pos[3, :2] = [4, 8]
    out = ranking_sums(torch.tensor(scores, dtype=torch.float32), torch.tensor(pos))
    for k in (10, 20):
        ref = [brute(list(scores[b]), set(p for p in pos[b] if p >= 0), k) for b in range(4)]
        assert out[f"recall{k}"].item() == pytest.approx(sum(r for r, _ in ref), rel=1e-5)
        assert out[f"ndcg{k}"].item() == pytest.approx(sum(n for _, n in ref), rel=1e-5)
    assert int(out["n"]) == 4


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    data = recsys_synthetic(seed=1, users=40, items=60, dim=4, mean_interactions=15, k_core=2)
    model = bpr_mf(**data.model_args, dim=6)
    return data, model


def test_evaluate_matches_brute_force(tiny):
    data, model = tiny
    task = get_task(data)
    got = evaluate(model, data.test, task, batch_size=7)  # several user chunks
    U, I = (w.detach().numpy() for w in model.tables())
    indptr, indices = data.meta["train_indptr"].numpy(), data.meta["train_indices"].numpy()
    ref = {k: [] for k in ("recall10", "ndcg10", "recall20", "ndcg20")}
    for row, u in enumerate(data.test["x"].tolist()):
        s = list(U[u] @ I.T)
        excluded = set(indices[indptr[u] : indptr[u + 1]]) | {int(i) for i in data.test["seen"][row] if i >= 0}
        for i in excluded:
            s[i] = -np.inf
        targets = {int(i) for i in data.test["pos"][row] if i >= 0}
        assert not targets & excluded
        for k in (10, 20):
            r, n = brute(s, targets, k)
            ref[f"recall{k}"].append(r)
            ref[f"ndcg{k}"].append(n)
    for k, v in ref.items():
        assert got[k] == pytest.approx(np.mean(v), rel=1e-5), k


def test_topk_unseen_and_membership(tiny):
    data, model = tiny
    csr = TrainCSR.of(data, "cpu")
    U, I = model.tables()
    top = topk_unseen(Tables(U.detach(), I.detach()), csr, 5, chunk=9)
    indptr, indices = data.meta["train_indptr"], data.meta["train_indices"]
    for u in range(U.shape[0]):
        seen = set(indices[indptr[u] : indptr[u + 1]].tolist())
        s = (U[u] @ I.T).detach().numpy()
        ref = [i for i in np.argsort(-s) if i not in seen][:5]
        assert top[u].tolist() == ref
        assert bool(csr.contains(torch.tensor(u), torch.tensor(sorted(seen)[0])))
    users = torch.arange(U.shape[0])
    neg = uniform_negatives(users, 50, csr)
    assert not bool(csr.contains(users[:, None], neg).any())


def test_most_popular_ranks_by_train_counts_under_the_test_protocol(tiny):
    from kdlab.models.recsys_popular import most_popular

    data, _ = tiny
    got = evaluate(most_popular(data), data.test, get_task(data), batch_size=7)
    indptr, indices = data.meta["train_indptr"].numpy(), data.meta["train_indices"].numpy()
    # Counts from the training interactions only (not validation or test ones).
    counts = np.bincount(data.train["item"].numpy(), minlength=data.model_args["num_items"])
    assert np.array_equal(counts, data.meta["item_popularity"].numpy())
    ref = []
    for row, u in enumerate(data.test["x"].tolist()):
        # Equal counts: lower item id first (brute() sorts stably by score).
        s = list(counts.astype(float))
        excluded = set(indices[indptr[u] : indptr[u + 1]]) | {int(i) for i in data.test["seen"][row] if i >= 0}
        for i in excluded:
            s[i] = -np.inf
        targets = {int(i) for i in data.test["pos"][row] if i >= 0}
        ref.append(brute(s, targets, 20)[1])
    assert got["ndcg20"] == pytest.approx(np.mean(ref), rel=1e-5)
