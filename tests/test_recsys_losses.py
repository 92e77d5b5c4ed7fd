"""Ranking-distillation losses against independent numpy/loop computations on fixed tensors."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdlab.methods.rank_bpr import bpr_loss
from kdlab.methods.rank_cd import cd_loss
from kdlab.methods.rank_de import ExpertProjector, de_loss, inconsistent_pairs
from kdlab.methods.rank_pckd import list_loss, pair_loss
from kdlab.methods.rank_rd import rd_loss
from kdlab.methods.rank_rrd import rrd_loss

A = np.array([[1.5, -0.3, 0.2, 2.0], [0.0, 0.7, -1.2, 0.4]])
B = np.array([[0.5, 0.1, -0.8, 1.0], [1.1, -0.2, 0.3, 0.0]])


def t(a):
    return torch.tensor(a, dtype=torch.float64)


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_bpr():
    pos = np.array([1.0, -0.5])
    neg = np.array([[0.2, 0.3], [-1.0, 0.5]])
    ref = np.mean([-math.log(sig(pos[b] - neg[b, k])) for b in range(2) for k in range(2)])
    assert bpr_loss(t(pos), t(neg)).item() == pytest.approx(ref, rel=1e-10)


def test_rd():
    w = np.exp(-np.arange(1, 5) / 2.0)
    w = w / w.sum()
    ref = np.mean([sum(-w[r] * math.log(sig(A[b, r])) for r in range(4)) for b in range(2)])
    assert rd_loss(t(A), t(w)).item() == pytest.approx(ref, rel=1e-10)


def test_cd():
    t1, t2 = 2.0, 0.5
    ref = []
    for b in range(2):
        for k in range(4):
            y = sig((B[b, k] + t2) / t1)
            p = sig(A[b, k])
            ref.append(-(y * math.log(p) + (1 - y) * math.log(1 - p)))
    assert cd_loss(t(A), t(B), t1, t2).item() == pytest.approx(np.mean(ref), rel=1e-10)


def test_rrd():
    s = A  # interesting, teacher order
    u = B[:, :3]  # uninteresting
    ref = []
    for b in range(2):
        tot = 0.0
        for k in range(4):
            denom = sum(math.exp(s[b, l]) for l in range(k, 4)) + sum(math.exp(x) for x in u[b])
            tot -= s[b, k] - math.log(denom)
        ref.append(tot)
    assert rrd_loss(t(s), t(u)).item() == pytest.approx(np.mean(ref), rel=1e-10)


def test_de_loss():
    ref = np.mean([sum((A[b, d] - B[b, d]) ** 2 for d in range(4)) for b in range(2)])
    assert de_loss(t(A), t(B)).item() == pytest.approx(ref, rel=1e-10)


def test_pair_loss_and_inconsistency_count():
    r_i, r_j = A[:, :2], A[:, 2:]
    rh_i, rh_j = B[:, :2], B[:, 2:]
    terms, bad = [], 0
    for b in range(2):
        for k in range(2):
            prod = (rh_i[b, k] - rh_j[b, k]) * (r_i[b, k] - r_j[b, k])
            terms.append(-math.log(sig(prod)))
            bad += prod < 0
    assert pair_loss(t(r_i), t(r_j), t(rh_i), t(rh_j)).item() == pytest.approx(np.mean(terms), rel=1e-10)
    assert int(inconsistent_pairs(t(r_i), t(r_j), t(rh_i), t(rh_j))) == bad
    assert 0 < bad < 4  # the fixed tensors exercise both signs


@pytest.mark.parametrize("tau", [0.1, 1.0])
def test_list_loss(tau):
    ref = []
    for b in range(2):
        p = np.exp(A[b] / tau) / np.exp(A[b] / tau).sum()
        logq = B[b] / tau - math.log(np.exp(B[b] / tau).sum())
        ref.append(-(p * logq).sum())
    assert list_loss(t(A), t(B), tau).item() == pytest.approx(np.mean(ref), rel=1e-9)


def test_expert_projector_uses_the_selected_expert():
    torch.manual_seed(0)
    proj = ExpertProjector(3, 6, num_experts=4).double()
    e_s, e_t = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 6, dtype=torch.float64)
    out = proj(e_s, e_t, sample=False)
    choice = proj.selector(e_t).argmax(-1)
    for b in range(5):
        ex = proj.experts[int(choice[b])]
        hidden = torch.relu(ex[0].weight @ e_s[b] + ex[0].bias)
        assert torch.allclose(out[b], ex[2].weight @ hidden + ex[2].bias)
    assert ex[0].out_features == (3 + 6) // 2
    # Gumbel selection is one-hot in the forward pass but lets gradients reach the selector.
    proj(e_s, e_t, tau=1.0, sample=True).sum().backward()
    assert proj.selector.weight.grad.abs().sum() > 0


def test_gumbel_temperature_follows_de_rrd_schedule():
    from kdlab.methods.rank_de import gumbel_temperature

    # DE-RRD / PCKD code: T_e = end * anneal * (1 / anneal)^(e / E), floored at end; 1 -> 1e-10.
    end, anneal, epochs = 1e-10, 1e10, 20
    for e in (0, 1, 7, 10, 19, 20, 25):
        ref = max(end * anneal * (1.0 / anneal) ** (e / epochs), end)
        assert gumbel_temperature(e, epochs, 1.0, 1e-10) == pytest.approx(ref, rel=1e-9)
    assert gumbel_temperature(10, 20, 1.0, 1e-10) == pytest.approx(1e-5, rel=1e-9)  # halfway: geometric mean
    assert gumbel_temperature(25, 20, 1.0, 1e-10) == 1e-10  # floored past the end
    assert gumbel_temperature(13, 20, 0.5, None) == 0.5  # no annealing: fixed


def test_soft_gumbel_gates_match_de_rrd_formula_and_harden_as_tau_falls():
    torch.manual_seed(0)
    proj = ExpertProjector(3, 6, num_experts=4).double()
    e_t = torch.randn(50, 6, dtype=torch.float64)
    logits = proj.selector(e_t)
    for tau in (1.0, 0.1, 1e-10):
        torch.manual_seed(1)  # the noise torch's gumbel_softmax draws: -log(Exp(1))
        g = -torch.empty_like(logits).exponential_().log()
        torch.manual_seed(1)
        gates = proj.gates(e_t, tau, sample=True)
        # DE-RRD: softmax((log(softmax(selector(e_t)) + 1e-10) + g) / T)
        ref = torch.softmax((torch.log(torch.softmax(logits, 1) + 1e-10) + g) / tau, 1)
        assert torch.allclose(gates, ref, atol=1e-6)
        if tau == 1.0:
            assert gates.max(1).values.min() < 0.9  # a soft mixture of experts at the start
        if tau == 1e-10:
            assert torch.equal(gates, F.one_hot(gates.argmax(1), 4).double())  # one expert at the end


def test_de_anneals_its_gates_each_epoch():
    from kdlab.data.recsys_synthetic import recsys_synthetic
    from kdlab.methods.base import MethodContext
    from kdlab.methods.rank_de import DE, gumbel_temperature
    from kdlab.models.recsys_mf import bpr_mf
    from kdlab.tasks.base import get_task

    data = recsys_synthetic(seed=0, users=30, items=40, dim=4, mean_interactions=10, k_core=2)
    task = get_task(data)
    s, t = bpr_mf(**data.model_args, dim=4), bpr_mf(**data.model_args, dim=8)
    ctx = MethodContext(num_classes=1, student=s, teachers=[t], train_size=1, epochs=10,
                        device=torch.device("cpu"), data=data, task=task)
    batch = {k: v[:64] for k, v in data.train.tensors.items()}
    for end, hard in ((1e-10, False), (None, True)):
        m = DE(DE.Params(gumbel_tau_end=end, gumbel_hard=hard, incons_top=5), ctx)
        m.build(task.forward(s, batch), [task.forward(t, batch)])
        for e in range(10):
            m.on_epoch_start(e)
            m(batch, task.forward(s, batch), [task.forward(t, batch)])
            assert m.epoch_metrics()["gumbel_tau"] == gumbel_temperature(e, 10, 1.0, end)
        assert m.tau == (1.0 if end is None else pytest.approx(1e-9))


@pytest.mark.parametrize("tau,sample,hard", [(1e-10, True, False), (0.02, True, False), (1.0, True, False),
                                             (1.0, False, False), (1.0, True, True)])
def test_expert_projector_runs_experts_on_their_gated_rows_with_the_dense_sum_and_gradients(tau, sample, hard):
    # Each expert runs only on rows whose gate is not exactly 0 (the DE cost once the annealed
    # gates are one-hot); output and every gradient must equal the dense sum over all experts.
    torch.manual_seed(0)
    proj = ExpertProjector(3, 6, num_experts=4).double()
    e_s = torch.randn(40, 3, dtype=torch.float64, requires_grad=True)
    e_t = torch.randn(40, 6, dtype=torch.float64) * 3
    w = torch.randn(40, 6, dtype=torch.float64)
    seen = []
    hooks = [ex.register_forward_hook(lambda m, i, o: seen.append(len(i[0]))) for ex in proj.experts]
    torch.manual_seed(1)
    (proj(e_s, e_t, tau, sample, hard) * w).sum().backward()
    for h in hooks:
        h.remove()
    grads = [p.grad for p in proj.parameters()] + [e_s.grad]
    proj.zero_grad(set_to_none=True)
    e_s.grad = None
    torch.manual_seed(1)
    g = proj.gates(e_t, tau, sample, hard)
    ref = sum(g[:, k : k + 1] * ex(e_s) for k, ex in enumerate(proj.experts))
    (ref * w).sum().backward()
    assert torch.allclose(g.sum(1), torch.ones(40, dtype=torch.float64))
    ref_grads = [p.grad for p in proj.parameters()] + [e_s.grad]
    for a, b in zip(grads, ref_grads):  # the selector has none with argmax gates (sample=False)
        assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, atol=1e-12))
    assert sum(a is None for a in grads) == (0 if sample else 2)
    nonzero = int((g != 0).sum())
    if nonzero * 2 <= g.numel() and not (sample and hard):
        assert sum(seen) == nonzero  # one-hot gates: 40 rows in all, not 4 x 40
        if tau == 1e-10 or not sample:
            assert sum(seen) == 40
    else:
        assert sum(seen) == 4 * 40  # soft or straight-through gates: every expert on every row
