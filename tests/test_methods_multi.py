"""Multi-teacher (avg, ca_mkd, aekd) and DML losses against independent numpy computations."""

import numpy as np
import pytest
import torch

from kdlab.methods.base import MethodContext, Outputs
from kdlab.methods.multi_teacher import AdaptiveEnsembleKD, AverageTeachers, ConfidenceAwareMKD, min_norm_weights
from kdlab.methods.online_dml import DeepMutualLearning
from kdlab.registry import MODELS

S = np.array([[2.0, -1.0, 0.5, 0.0], [0.1, 0.2, 3.0, -2.0], [-1.0, 1.0, 1.0, 0.0]])
T1 = np.array([[3.0, 0.0, 1.0, -1.0], [0.0, 1.0, 2.0, 0.5], [0.0, 2.0, -1.0, 1.0]])
T2 = np.array([[0.0, 2.0, 0.0, 1.0], [1.0, 0.0, 4.0, 0.0], [2.0, 0.0, 0.5, 0.0]])
T3 = np.array([[1.0, 1.0, 1.0, 1.5], [-1.0, 0.5, 0.0, 2.0], [0.0, 3.0, 0.0, -1.0]])
Y = np.array([0, 2, 1])


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def kl(p, q):
    return np.sum(p * (np.log(p) - np.log(q)), axis=-1)


def ctx(k=4, student=None, data=None):
    return MethodContext(num_classes=k, student=student, teachers=[], train_size=3, epochs=1, device=torch.device("cpu"), data=data)


def t(a):
    return torch.tensor(a, dtype=torch.float32)


def run(method, teachers, s=S, y=Y):
    return method({"y": torch.tensor(y)}, Outputs(logits=t(s)), [Outputs(logits=t(x)) for x in teachers])


def test_avg_is_kd_to_mean_distribution():
    tau = 3.0
    pbar = (softmax(T1 / tau) + softmax(T2 / tau) + softmax(T3 / tau)) / 3
    expected = tau**2 * np.mean(kl(pbar, softmax(S / tau)))
    out = run(AverageTeachers(AverageTeachers.Params(tau=tau), ctx()), [T1, T2, T3])
    assert out["avg_kd"].item() == pytest.approx(expected, rel=1e-5)


def test_avg_with_one_teacher_is_kd():
    tau = 4.0
    out = run(AverageTeachers(AverageTeachers.Params(tau=tau), ctx()), [T1])
    assert out["avg_kd"].item() == pytest.approx(tau**2 * np.mean(kl(softmax(T1 / tau), softmax(S / tau))), rel=1e-5)


# --------------------------------------------------------------------- CA-MKD
def numpy_ca_weights(teachers, y):
    ce = np.stack([-np.log(softmax(tt)[np.arange(len(y)), y]) for tt in teachers])  # [K, B]
    e = np.exp(ce)
    return (1 - e / e.sum(0)) / (len(teachers) - 1)


def test_ca_mkd_matches_paper_formula():
    tau = 4.0
    teachers = [T1, T2, T3]
    w = numpy_ca_weights(teachers, Y)
    kls = np.stack([tau**2 * kl(softmax(tt / tau), softmax(S / tau)) for tt in teachers])
    expected = np.mean((w * kls).sum(0))
    out = run(ConfidenceAwareMKD(ConfidenceAwareMKD.Params(tau=tau), ctx()), teachers)
    assert out["ca_mkd"].item() == pytest.approx(expected, rel=1e-5)
    assert np.allclose(w.sum(0), 1.0)


def test_ca_mkd_weights_follow_teacher_confidence():
    from kdlab.methods.multi_teacher import confidence_weights

    teachers = [T1, T2, T3]
    w = confidence_weights([t(x) for x in teachers], torch.tensor(Y)).numpy()
    ce = np.stack([-np.log(softmax(tt)[np.arange(3), Y]) for tt in teachers])
    for b in range(3):  # per sample: lower CE with the label -> strictly higher weight
        order_ce = np.argsort(ce[:, b])
        assert np.all(np.diff(w[order_ce, b]) < 0)
    # T1 is right on sample 0 (label 0), T2 is not: T1 must weigh more there.
    assert w[0, 0] > w[1, 0]


# ----------------------------------------------------------------------- AEKD
def test_min_norm_symmetric_gradients_split_evenly():
    g = torch.tensor([[1.0, -1.0, 0.5], [-1.0, 1.0, -0.5]])  # opposite: the mid-point is zero
    assert np.allclose(min_norm_weights(g).numpy(), [0.5, 0.5], atol=1e-6)
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert np.allclose(min_norm_weights(g).numpy(), [0.5, 0.5], atol=1e-6)


def test_min_norm_collinear_picks_smaller_gradient():
    g = torch.tensor([[2.0, 2.0], [1.0, 1.0]])
    assert np.allclose(min_norm_weights(g).numpy(), [0.0, 1.0], atol=1e-6)


def test_min_norm_two_teachers_closed_form():
    rng = np.random.default_rng(0)
    for _ in range(5):
        g1, g2 = rng.normal(size=6), rng.normal(size=6)
        a1 = np.clip((g2 - g1) @ g2 / ((g1 - g2) @ (g1 - g2)), 0, 1)
        got = min_norm_weights(torch.tensor(np.stack([g1, g2]))).numpy()
        assert got == pytest.approx([a1, 1 - a1], abs=1e-6)


def brute_force_min_norm(g, cap=1.0, step=0.0025):
    """The best point of a fine grid over the capped 3-simplex."""
    w = np.arange(0, 1 + step / 2, step)
    a1, a2 = np.meshgrid(w, w, indexing="ij")
    a = np.stack([a1.ravel(), a2.ravel(), 1 - a1.ravel() - a2.ravel()], 1)
    a = a[(a[:, 2] >= -1e-12) & (a <= cap + 1e-12).all(1)]
    norms = np.sum((a @ g) ** 2, axis=1)
    i = int(np.argmin(norms))
    return norms[i], a[i]


@pytest.mark.parametrize("cap", [1.0, 0.4])
def test_min_norm_three_teachers_vs_grid(cap):
    g = np.array([[1.0, 0.2, -0.3], [0.1, -0.8, 0.5], [-0.4, 0.3, 0.9]]) + 0.5
    best, arg = brute_force_min_norm(g, cap)
    got = min_norm_weights(torch.tensor(g), cap=cap).numpy()
    assert np.sum((got @ g) ** 2) <= best + 1e-9
    assert np.abs(got - arg).max() < 0.01
    assert got.max() <= cap + 1e-9 and got.sum() == pytest.approx(1.0)


def test_aekd_gradient_formula_and_loss():
    """The closed-form gradient tau/B (p_s - p_t) equals autograd's, and the loss is the
    min-norm-weighted sum of the per-teacher KD losses."""
    tau = 2.0
    s = t(S).requires_grad_(True)
    from kdlab.methods.logit_kd import kd_loss

    kd_loss(s, t(T1), tau).backward()
    assert np.allclose(s.grad.numpy(), tau / 3 * (softmax(S / tau) - softmax(T1 / tau)), atol=1e-6)

    m = AdaptiveEnsembleKD(AdaptiveEnsembleKD.Params(tau=tau), ctx())
    out = run(m, [T1, T2])
    g1 = (softmax(S / tau) - softmax(T1 / tau)).ravel()
    g2 = (softmax(S / tau) - softmax(T2 / tau)).ravel()
    a1 = np.clip((g2 - g1) @ g2 / ((g1 - g2) @ (g1 - g2)), 0, 1)
    kd1 = tau**2 * np.mean(kl(softmax(T1 / tau), softmax(S / tau)))
    kd2 = tau**2 * np.mean(kl(softmax(T2 / tau), softmax(S / tau)))
    assert out["aekd"].item() == pytest.approx(a1 * kd1 + (1 - a1) * kd2, rel=1e-5)


def test_aekd_constructed_teachers():
    """Student uniform on 2 classes; teachers at (0.7, 0.3) and (0.3, 0.7) pull in opposite
    directions with equal strength: weights 1/2 each. Teachers at (0.6, 0.4) and (0.7, 0.3)
    agree and the first pulls less: all weight on it."""
    s = np.zeros((1, 2))
    logit = lambda p: np.log(np.array([[p, 1 - p]]))  # noqa: E731
    m = AdaptiveEnsembleKD(AdaptiveEnsembleKD.Params(tau=1.0), ctx(k=2))
    w = m.teacher_weights(t(s), [t(logit(0.7)), t(logit(0.3))]).numpy()
    assert w == pytest.approx([0.5, 0.5], abs=1e-5)
    w = m.teacher_weights(t(s), [t(logit(0.6)), t(logit(0.7))]).numpy()
    assert w == pytest.approx([1.0, 0.0], abs=1e-5)
    capped = AdaptiveEnsembleKD(AdaptiveEnsembleKD.Params(tau=1.0, nu=0.8), ctx(k=2))  # cap 1/(0.8*2)
    w = capped.teacher_weights(t(s), [t(logit(0.6)), t(logit(0.7))]).numpy()
    assert w == pytest.approx([0.625, 0.375], abs=1e-5)


# ------------------------------------------------------------------------ DML
class _Data:
    num_classes = 3
    input_shape = (4,)
    model_args: dict = {}


def test_dml_losses_match_numpy():
    torch.manual_seed(0)
    student = MODELS.get("mlp").obj(num_classes=3, input_shape=(4,), hidden=[5])
    m = DeepMutualLearning(DeepMutualLearning.Params(tau=2.0), ctx(k=3, student=student, data=_Data()))
    peer = m.peers[0]
    assert type(peer) is type(student)
    assert not torch.equal(peer.fc.weight, student.fc.weight)  # fresh weights, same shapes
    x = torch.randn(6, 4)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    zs = student(x)
    out = m({"x": x, "y": y}, Outputs(logits=zs), [])
    s_np, p_np = zs.detach().numpy(), peer(x).detach().numpy()
    tau = 2.0
    student_term = tau**2 * np.mean(kl(softmax(p_np / tau), softmax(s_np / tau)))
    peer_ce = -np.mean(np.log(softmax(p_np)[np.arange(6), y.numpy()]))
    peer_term = peer_ce + tau**2 * np.mean(kl(softmax(s_np / tau), softmax(p_np / tau)))
    assert out["dml"].item() == pytest.approx(student_term, rel=1e-4)
    assert out["dml_peers"].item() == pytest.approx(peer_term, rel=1e-4)


def test_dml_peer_spec_and_gradient_isolation():
    torch.manual_seed(0)
    student = MODELS.get("mlp").obj(num_classes=3, input_shape=(4,), hidden=[5])
    params = DeepMutualLearning.Params(peer={"name": "mlp", "params": {"hidden": [7, 3]}}, num_peers=2)
    m = DeepMutualLearning(params, ctx(k=3, student=student, data=_Data()))
    assert len(m.peers) == 2 and m.peers[0].blocks[0][0].out_features == 7
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    out = m({"x": x, "y": y}, Outputs(logits=student(x)), [])
    out["dml"].backward()  # the student's term must not train the peers (their logits are targets)
    assert all(p.grad is None for p in m.peers.parameters())
    assert student.fc.weight.grad is not None
