"""Relation methods (sp, cc, rkd, pkt, fsp) and CRD's memory bank and NCE loss against plain
numpy/loop re-implementations of their formulas on fixed tensors."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from kdlab.data.base import DataBundle, Split
from kdlab.errors import KdlabError
from kdlab.methods.base import MethodContext, Outputs
from kdlab.methods.contrastive_crd import CRD
from kdlab.methods.relation import CC, FSP, PKT, RKD, SP

RNG = np.random.default_rng(1)


def ctx(n=8, data=None):
    return MethodContext(num_classes=3, student=None, teachers=[], train_size=n, epochs=1, device=torch.device("cpu"), data=data)


def t(a):
    return torch.tensor(np.asarray(a), dtype=torch.float32)


def loss_of(m, S, T, batch=None):
    so, to = Outputs(features={"a": t(S)}), [Outputs(features={"b": t(T)})]
    m.build(so, to)
    return m(batch or {}, so, to)


def layers(cls, **kw):
    return cls(cls.Params(student_layers=["a"], teacher_layers=["b"], **kw), ctx())


def huber(x):
    x = np.abs(x)
    return np.where(x < 1, 0.5 * x**2, x - 0.5)


# ---------------------------------------------------------------------------------- SP
def test_sp_matches_loop():
    S, T = RNG.normal(size=(4, 3, 2, 2)), RNG.normal(size=(4, 5, 3, 3))  # widths and sizes differ
    B = 4
    def gram(F):
        F = F.reshape(B, -1)
        G = np.array([[F[i] @ F[j] for j in range(B)] for i in range(B)])
        return G / np.linalg.norm(G, axis=1, keepdims=True)
    expected = ((gram(S) - gram(T)) ** 2).sum() / B**2
    assert loss_of(layers(SP), S, T)["sp"].item() == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------------- CC
@pytest.mark.parametrize("gamma,order", [(0.4, 2), (1.0, 3)])
def test_cc_matches_taylor_formula(gamma, order):
    S, T = RNG.normal(size=(5, 4)), RNG.normal(size=(5, 7))
    def psi(F):
        F = F / np.linalg.norm(F, axis=1, keepdims=True)
        return np.array([[math.exp(-2 * gamma) * sum((2 * gamma * (a @ b)) ** p / math.factorial(p) for p in range(order + 1))
                          for b in F] for a in F])
    expected = ((psi(S) - psi(T)) ** 2).sum() / 25
    assert loss_of(layers(CC, gamma=gamma, order=order), S, T)["cc"].item() == pytest.approx(expected, rel=1e-5)


def test_cc_high_order_approaches_the_exact_rbf():
    """For unit vectors exp(-g||a-b||^2) = exp(-2g) exp(2g a.b): a long expansion is the RBF."""
    from kdlab.methods.relation import rbf_taylor_correlation

    F = RNG.normal(size=(4, 3))
    Fn = F / np.linalg.norm(F, axis=1, keepdims=True)
    exact = np.exp(-0.4 * ((Fn[:, None] - Fn[None]) ** 2).sum(-1))
    assert rbf_taylor_correlation(t(F), 0.4, 8).numpy() == pytest.approx(exact, abs=1e-6)


# --------------------------------------------------------------------------------- RKD
def rkd_numpy(S, T):
    B = len(S)
    def dist(E):
        D = np.array([[np.linalg.norm(E[i] - E[j]) if i != j else 0.0 for j in range(B)] for i in range(B)])
        return D / D[D > 0].mean()
    def angles(E):
        out = np.zeros((B, B, B))
        for i in range(B):
            for j in range(B):
                for k in range(B):
                    u, v = E[j] - E[i], E[k] - E[i]
                    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
                    out[i, j, k] = 0.0 if nu == 0 or nv == 0 else u @ v / (nu * nv)
        return out
    return huber(dist(S) - dist(T)).mean(), huber(angles(S) - angles(T)).mean()


def test_rkd_distance_and_angle_match_loops():
    S, T = RNG.normal(size=(5, 3)), RNG.normal(size=(5, 6)) * 3
    d, a = rkd_numpy(S, T)
    out = loss_of(layers(RKD), S, T)
    assert out["rkd_dist"].item() == pytest.approx(25 * d, rel=1e-4)
    assert out["rkd_angle"].item() == pytest.approx(50 * a, rel=1e-4)


def test_rkd_is_scale_invariant_in_distance():
    S = RNG.normal(size=(5, 3))
    out = loss_of(layers(RKD), S, 7.0 * S)
    assert out["rkd_dist"].item() == pytest.approx(0.0, abs=1e-5)
    assert out["rkd_angle"].item() == pytest.approx(0.0, abs=1e-5)


# --------------------------------------------------------------------------------- PKT
def test_pkt_matches_numpy():
    S, T = RNG.normal(size=(4, 3)), RNG.normal(size=(4, 5))
    eps = 1e-7
    def cond(F):
        F = F / (np.linalg.norm(F, axis=1, keepdims=True) + eps)
        P = (F @ F.T + 1) / 2
        return P / P.sum(1, keepdims=True)
    ps, pt = cond(S), cond(T)
    expected = np.mean(pt * np.log((pt + eps) / (ps + eps)))
    assert loss_of(layers(PKT), S, T)["pkt"].item() == pytest.approx(expected, rel=1e-4)


# --------------------------------------------------------------------------------- FSP
def test_fsp_matches_loop():
    S0, S1 = RNG.normal(size=(2, 2, 4, 4)), RNG.normal(size=(2, 3, 2, 2))
    T0, T1 = RNG.normal(size=(2, 2, 4, 4)), RNG.normal(size=(2, 3, 2, 2))
    def fsp(A, Bm):
        A = A.reshape(2, 2, 2, 2, 2, 2).mean(axis=(3, 5))  # 4x4 -> 2x2 block mean
        return np.array([[[(A[n, i] * Bm[n, j]).sum() / 4 for j in range(3)] for i in range(2)] for n in range(2)])
    expected = np.mean((fsp(S0, S1) - fsp(T0, T1)) ** 2)
    m = FSP(FSP.Params(student_layers=["a", "c"], teacher_layers=["b", "d"]), ctx())
    so = Outputs(features={"a": t(S0), "c": t(S1)})
    to = [Outputs(features={"b": t(T0), "d": t(T1)})]
    m.build(so, to)
    assert m({}, so, to)["fsp"].item() == pytest.approx(expected, rel=1e-5)


def test_fsp_rejects_unequal_widths():
    m = FSP(FSP.Params(student_layers=["a", "c"], teacher_layers=["b", "d"]), ctx())
    so = Outputs(features={"a": torch.randn(2, 2, 4, 4), "c": torch.randn(2, 3, 2, 2)})
    to = [Outputs(features={"b": torch.randn(2, 4, 4, 4), "d": torch.randn(2, 3, 2, 2)})]
    with pytest.raises(KdlabError, match="equal widths"):
        m.build(so, to)


# --------------------------------------------------------------------------------- CRD
def nce_numpy(P, n_data):
    B, K1 = P.shape
    noise = (K1 - 1) / n_data
    eps = 1e-7
    total = 0.0
    for b in range(B):
        total += math.log(P[b, 0] / (P[b, 0] + noise + eps))
        for k in range(1, K1):
            total += math.log(noise / (P[b, k] + noise + eps))
    return -total / B


def make_crd(n=6, dim=3, k=2, momentum=0.5, tau=0.5):
    torch.manual_seed(0)  # the memory banks start random: fix them so the test is repeatable
    m = CRD(CRD.Params(student_layers=["a"], teacher_layers=["b"], feat_dim=dim, nce_k=k, tau=tau,
                       momentum=momentum, negatives="uniform"), ctx(n))
    so, to = Outputs(features={"a": torch.zeros(2, dim)}), [Outputs(features={"b": torch.zeros(2, dim)})]
    m.build(so, to)
    m.embed_s, m.embed_t = nn.Identity(), nn.Identity()  # fixed embeddings: features are the unit vectors
    return m


def test_crd_nce_and_memory_update_match_hand_computation():
    n, tau, mom = 6, 0.5, 0.5
    m = make_crd(n, tau=tau, momentum=mom)
    vs = RNG.normal(size=(2, 3)); vs /= np.linalg.norm(vs, axis=1, keepdims=True)
    vt = RNG.normal(size=(2, 3)); vt /= np.linalg.norm(vt, axis=1, keepdims=True)
    index = np.array([4, 1])
    idx = np.array([[4, 0, 2], [1, 5, 5]])
    m.sample = lambda index_, y_: torch.tensor(idx)
    mem_s, mem_t = m.memory.memory_s.numpy().copy(), m.memory.memory_t.numpy().copy()

    out = m({"index": torch.tensor(index)}, Outputs(features={"a": t(vs)}), [Outputs(features={"b": t(vt)})])

    raw_s = np.array([[math.exp(mem_t[idx[b, j]] @ vs[b] / tau) for j in range(3)] for b in range(2)])
    raw_t = np.array([[math.exp(mem_s[idx[b, j]] @ vt[b] / tau) for j in range(3)] for b in range(2)])
    z_s, z_t = raw_s.mean() * n, raw_t.mean() * n
    expected = nce_numpy(raw_s / z_s, n) + nce_numpy(raw_t / z_t, n)
    assert out["crd"].item() == pytest.approx(expected, rel=1e-5)
    assert m.memory.z_s.item() == pytest.approx(z_s, rel=1e-5)

    # Momentum update of the batch's rows only, re-normalised.
    new_s, new_t = m.memory.memory_s.numpy(), m.memory.memory_t.numpy()
    for b, i in enumerate(index):
        r = mom * mem_s[i] + (1 - mom) * vs[b]
        # unit-vector components: float32 rounding needs an absolute floor near zero
        assert new_s[i] == pytest.approx(r / np.linalg.norm(r), rel=1e-5, abs=1e-6)
        r = mom * mem_t[i] + (1 - mom) * vt[b]
        assert new_t[i] == pytest.approx(r / np.linalg.norm(r), rel=1e-5, abs=1e-6)
    untouched = [i for i in range(n) if i not in index]
    assert new_s[untouched] == pytest.approx(mem_s[untouched])

    # Z is fixed on the first batch: a second call keeps it.
    m({"index": torch.tensor(index)}, Outputs(features={"a": t(vs)}), [Outputs(features={"b": t(vt)})])
    assert m.memory.z_s.item() == pytest.approx(z_s, rel=1e-5)


def test_crd_other_class_negatives_never_share_the_query_class():
    y = torch.tensor([0, 1, 2, 0, 1, 2, 2, 0, 1, 1])
    split = Split({"x": torch.zeros(10, 1), "y": y})
    data = DataBundle(train=split, val=split, test=split, num_classes=3, input_shape=(1,))
    m = CRD(CRD.Params(student_layers=["a"], teacher_layers=["b"], nce_k=500), ctx(10, data))
    index = torch.tensor([0, 1, 6])
    torch.manual_seed(0)
    idx = m.sample(index, y[index])
    assert idx[:, 0].tolist() == index.tolist()
    for row, q in zip(idx, index):
        neg = row[1:]
        assert bool((y[neg] != y[q]).all())
        assert set(neg.tolist()) == {i for i in range(10) if y[i] != y[q]}  # every other-class sample is drawn


def test_crd_memory_bank_is_saved_with_the_method():
    m = make_crd()
    assert {"memory.memory_s", "memory.memory_t", "memory.z_s", "memory.z_t"} <= set(m.state_dict())


@pytest.mark.parametrize("n_rows, k1", [(100, 3), (20, 20)])  # gather path, then full-bank matmul path
def test_crd_scores_equal_on_both_computation_paths(n_rows, k1):
    import numpy as np

    from kdlab.methods.contrastive_crd import ContrastMemory

    g = torch.Generator().manual_seed(0)
    mem = ContrastMemory(dim=4, n_data=n_rows, tau=0.5, momentum=0.5)
    bank = torch.randn(n_rows, 4, generator=g)
    query = torch.randn(5, 4, generator=g)
    idx = torch.randint(0, n_rows, (5, k1), generator=g)
    z = torch.tensor(2.0)
    got = mem.scores(query, bank, idx, z).numpy()
    b, q, i = bank.numpy(), query.numpy(), idx.numpy()
    want = np.array([[np.exp(b[i[r, j]] @ q[r] / 0.5) / 2.0 for j in range(k1)] for r in range(5)])
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("n_rows", [12, 400])  # whole-bank matmul path, then gather path
def test_crd_memory_backward_after_in_place_bank_update(n_rows):
    from kdlab.methods.contrastive_crd import ContrastMemory, nce_loss

    g = torch.Generator().manual_seed(0)
    mem = ContrastMemory(dim=4, n_data=n_rows, tau=0.5, momentum=0.5)
    v_s = torch.nn.functional.normalize(torch.randn(3, 4, generator=g), dim=1).requires_grad_()
    v_t = torch.nn.functional.normalize(torch.randn(3, 4, generator=g), dim=1).requires_grad_()
    index = torch.tensor([0, 1, 2])
    idx = torch.cat([index[:, None], torch.randint(0, n_rows, (3, 5), generator=g)], 1)
    before = mem.memory_s.clone()
    out_s, out_t = mem(v_s, v_t, index, idx)  # updates both banks in place
    (nce_loss(out_s, n_rows) + nce_loss(out_t, n_rows)).backward()
    assert v_s.grad is not None and torch.isfinite(v_s.grad).all() and v_s.grad.abs().sum() > 0
    assert not torch.equal(before[:3], mem.memory_s[:3])  # the batch's rows moved
