"""Rank-biased sampling: empirical frequencies follow exp(-r/T) over the top-M ranks."""

import numpy as np
import pytest
import torch

from kdlab.tasks.ranking_ops import sample_ranks


def test_rank_frequencies_follow_exp_minus_r_over_T():
    torch.manual_seed(0)
    m, T = 20, 5.0
    draws = sample_ranks(4000, m, 10, T, replacement=True)
    assert draws.min() >= 0 and draws.max() < m
    freq = np.bincount(draws.flatten().numpy(), minlength=m) / draws.numel()
    p = np.exp(-np.arange(1, m + 1) / T)
    p /= p.sum()
    # 40k draws: each frequency within 4 standard errors of its probability.
    se = np.sqrt(p * (1 - p) / draws.numel())
    assert np.all(np.abs(freq - p) < 4 * se + 1e-4), (freq, p)
    # The ratio of neighbouring ranks is e^{-1/T}.
    assert freq[0] / freq[1] == __import__("pytest").approx(np.exp(1 / T), rel=0.05)


def test_without_replacement_gives_distinct_ranks():
    torch.manual_seed(1)
    draws = sample_ranks(50, 30, 10, 10.0, replacement=False)
    assert all(len(set(r.tolist())) == 10 for r in draws)
    # Low ranks are still preferred: rank 0 appears far more often than rank 29.
    counts = np.bincount(draws.flatten().numpy(), minlength=30)
    assert counts[0] > counts[29]


def tiny_rrd(**params):
    """An RRD method built on tiny synthetic data: ~15 of 60 items per user are train items, so
    20 uniform draws per user hit some of them unless they are excluded."""
    from kdlab.data.recsys_synthetic import recsys_synthetic
    from kdlab.methods.base import MethodContext
    from kdlab.methods.rank_rrd import RRD
    from kdlab.models.recsys_mf import bpr_mf
    from kdlab.tasks.base import get_task

    torch.manual_seed(0)
    data = recsys_synthetic(seed=0, users=40, items=60, dim=4, mean_interactions=15, k_core=2)
    task = get_task(data)
    s, t = bpr_mf(**data.model_args, dim=4), bpr_mf(**data.model_args, dim=8)
    ctx = MethodContext(num_classes=1, student=s, teachers=[t], train_size=1, epochs=1,
                        device=torch.device("cpu"), data=data, task=task)
    m = RRD(RRD.Params(K=5, L=20, M=15, **params), ctx)
    batch = {k: v[:100] for k, v in data.train.tensors.items()}
    s_out = task.forward(s, batch)
    m.build(s_out, [task.forward(t, batch)])
    m.on_epoch_start(0)  # redraw=epoch: every user's items, drawn once an epoch
    return m, data, batch, s_out


@pytest.mark.parametrize("by_rejection", [False, True])
def test_rrd_samples_in_teacher_order_and_outside_top_m_and_train_items(by_rejection):
    # (The bug: kdlab drew the uninteresting items outside the teacher's top-M only.)
    m, data, batch, _ = tiny_rrd()
    users = batch["x"]
    inter, unint = (m._inter[users], m._unint[users]) if not by_rejection else m.sample(users, by_rejection=True)
    indptr, indices = data.meta["train_indptr"], data.meta["train_indices"]
    for b, u in enumerate(users.tolist()):
        top = m._top[u].tolist()
        pos = [top.index(i) for i in inter[b].tolist()]
        assert pos == sorted(pos) and len(set(pos)) == 5
        assert not set(unint[b].tolist()) & set(top)
        assert not set(unint[b].tolist()) & set(indices[indptr[u] : indptr[u + 1]].tolist())
        assert len(set(unint[b].tolist())) == 20  # without replacement, as the DE-RRD code draws
    # Every other item is still drawn: the exclusion is exact, not a narrower range.
    u0 = users[0].item()
    allowed = set(range(m.num_items)) - set(m._top[u0].tolist()) - set(indices[indptr[u0] : indptr[u0 + 1]].tolist())
    seen = set()
    for _ in range(30):
        _, un = m.sample(users[:1], by_rejection=by_rejection)
        seen |= set(un[0].tolist())
    assert seen == allowed


def test_rrd_rejection_draws_a_uniform_subset_like_the_keys():
    # redraw=batch draws by rejection: each allowed item must be drawn with probability L/|allowed|,
    # as with the keys (the DE-RRD code's law); a user with fewer than L allowed items falls back.
    m, data, batch, _ = tiny_rrd()
    u = batch["x"][:1].expand(4000)
    torch.manual_seed(0)
    counts = {}
    for rejection in (False, True):
        _, un = m.sample(u, by_rejection=rejection)
        assert all(len(set(row)) == 20 for row in un.tolist())
        counts[rejection] = torch.bincount(un.flatten(), minlength=m.num_items).float() / len(u)
    allowed = counts[False] > 0
    p = 20 / int(allowed.sum())
    for c in counts.values():  # binomial s.d. sqrt(p(1-p)/4000) < 0.008: 5 s.d. at most
        assert torch.equal(c > 0, allowed) and float((c[allowed] - p).abs().max()) < 0.04
    excluded = torch.ones(3, m.num_items, dtype=torch.bool)
    excluded[:, :12] = False  # 12 allowed items < L = 20: all 12 first, then excluded ones
    out = m.uninteresting_by_rejection(excluded)
    assert all(set(range(12)) <= set(row) and len(set(row)) == 20 for row in out.tolist())


@pytest.mark.parametrize("redraw", ["epoch", "batch"])
def test_rrd_loss_uses_epoch_draws_over_distinct_users_or_fresh_rows(redraw):
    from kdlab.methods.rank_rrd import rrd_loss
    from kdlab.methods.rank_utils import score

    m, _, batch, s_out = tiny_rrd(redraw=redraw)
    tables = s_out.extras["tables"]
    if redraw == "epoch":
        users = batch["x"].unique()
        ref = rrd_loss(score(tables, users, m._inter[users]), score(tables, users, m._unint[users]))
        assert torch.equal(m(batch, s_out, [])["rrd"], ref)  # the epoch's draws, distinct users
        assert torch.equal(m(batch, s_out, [])["rrd"], ref)  # the same items all epoch
    else:
        torch.manual_seed(5)
        inter, unint = m.sample(batch["x"], by_rejection=True)
        ref = rrd_loss(score(tables, batch["x"], inter), score(tables, batch["x"], unint))
        torch.manual_seed(5)
        assert torch.equal(m(batch, s_out, [])["rrd"], ref)  # fresh draws for every batch row
        assert not torch.equal(m(batch, s_out, [])["rrd"], ref)
