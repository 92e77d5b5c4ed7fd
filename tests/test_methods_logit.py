"""DKD, DIST, logit standardisation and CTKD against independent numpy computations."""

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from kdlab.config.schema import MethodSpec
from kdlab.methods.base import MethodContext, Outputs
from kdlab.methods.logit_ctkd import CTKD, cosine_lambda
from kdlab.methods.logit_dist import DIST
from kdlab.methods.logit_dkd import DKD
from kdlab.methods.logit_kd import KD, kd_loss

S = np.array([[2.0, -1.0, 0.5, 0.0, 1.5], [0.1, 0.2, 3.0, -2.0, 0.0], [-1.0, 1.0, 1.0, 0.0, 2.5], [0.3, 0.3, -0.7, 1.1, 0.2]])
T = np.array([[3.0, 0.0, 1.0, -1.0, 2.0], [0.0, 1.0, 2.0, 0.5, -1.0], [0.0, 2.0, -1.0, 1.0, 3.0], [1.0, -2.0, 0.0, 2.0, 0.5]])
Y = np.array([0, 2, 4, 3])


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def kl(p, q):
    return np.sum(p * (np.log(p) - np.log(q)), axis=-1)


def zscore(z):
    return (z - z.mean(-1, keepdims=True)) / (z.std(-1, ddof=1, keepdims=True) + 1e-7)


def ctx(k=5, epochs=30):
    return MethodContext(num_classes=k, student=None, teachers=[], train_size=4, epochs=epochs, device=torch.device("cpu"))


def t(a):
    return torch.tensor(a, dtype=torch.float32)


def run(method, s=S, te=T, y=Y):
    return method({"y": torch.tensor(y)}, Outputs(logits=t(s)), [Outputs(logits=t(te))])


# ------------------------------------------------------------------------ DKD
def numpy_dkd(s, te, y, tau):
    """TCKD and NCKD by their definitions, sample by sample."""
    tck, nck = [], []
    for zs, zt, c in zip(s, te, y):
        ps, pt = softmax(zs / tau), softmax(zt / tau)
        bs, bt = np.array([ps[c], 1 - ps[c]]), np.array([pt[c], 1 - pt[c]])
        tck.append(kl(bt, bs))
        others = [j for j in range(len(zs)) if j != c]
        nck.append(kl(softmax(zt[others] / tau), softmax(zs[others] / tau)))
    return tau**2 * np.mean(tck), tau**2 * np.mean(nck)


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_dkd_matches_definition_after_warmup(tau):
    m = DKD(DKD.Params(alpha=0.5, beta=8.0, tau=tau, warmup=20), ctx())
    m.on_epoch_start(25)
    out = run(m)
    tck, nck = numpy_dkd(S, T, Y, tau)
    assert out["dkd_tckd"].item() == pytest.approx(0.5 * tck, rel=1e-5)
    assert out["dkd_nckd"].item() == pytest.approx(8.0 * nck, rel=1e-5)


def test_dkd_warmup_is_linear_in_one_based_epochs():
    tck, nck = numpy_dkd(S, T, Y, 4.0)
    m = DKD(DKD.Params(alpha=1.0, beta=2.0, tau=4.0, warmup=20), ctx())
    m.on_epoch_start(4)  # fifth epoch: factor 5/20, as mdistiller's epoch 5
    out = run(m)
    assert out["dkd_tckd"].item() == pytest.approx(0.25 * tck, rel=1e-5)
    assert out["dkd_nckd"].item() == pytest.approx(0.25 * 2.0 * nck, rel=1e-5)
    m.on_epoch_start(19)  # epoch 20 of 20: full weight from here on
    assert run(m)["dkd_nckd"].item() == pytest.approx(2.0 * nck, rel=1e-5)


def test_dkd_decomposes_kd():
    """KD = TCKD + (1 - p_t(gt)) * NCKD, per sample (Zhao et al. 2022, eq. 3)."""
    tau = 2.0
    m = DKD(DKD.Params(alpha=1.0, beta=1.0, tau=tau, warmup=0), ctx())
    for i in range(len(Y)):
        out = run(m, S[i : i + 1], T[i : i + 1], Y[i : i + 1])
        pt_gt = softmax(T[i] / tau)[Y[i]]
        expected = tau**2 * kl(softmax(T[i] / tau), softmax(S[i] / tau))
        assert out["dkd_tckd"].item() + (1 - pt_gt) * out["dkd_nckd"].item() == pytest.approx(expected, rel=1e-5)


def test_dkd_standardize_matches_numpy():
    tau = 2.0
    m = DKD(DKD.Params(alpha=1.0, beta=8.0, tau=tau, warmup=0, standardize=True), ctx())
    out = run(m)
    tck, nck = numpy_dkd(zscore(S), zscore(T), Y, tau)
    assert out["dkd_tckd"].item() == pytest.approx(tck, rel=1e-4)
    assert out["dkd_nckd"].item() == pytest.approx(8 * nck, rel=1e-4)


# -------------------------------------------------------- logit standardisation
def test_kd_standardize_matches_numpy():
    tau = 2.0
    out = KD(KD.Params(tau=tau, standardize=True), ctx())({"y": torch.tensor(Y)}, Outputs(logits=t(S)), [Outputs(logits=t(T))])
    expected = tau**2 * np.mean(kl(softmax(zscore(T) / tau), softmax(zscore(S) / tau)))
    assert out["kd"].item() == pytest.approx(expected, rel=1e-4)
    assert abs(out["kd"].item() - kd_loss(t(S), t(T), tau).item()) > 1e-2  # the option does something


def test_standardize_ignores_logit_shift_and_scale():
    """z-scoring makes the loss blind to the student's logit range: s and 3s + 5 give the same."""
    a = kd_loss(t(S), t(T), 4.0, standardize=True).item()
    b = kd_loss(t(3 * S + 5), t(T), 4.0, standardize=True).item()
    assert a == pytest.approx(b, rel=1e-5)
    assert kd_loss(t(S), t(T), 4.0).item() != pytest.approx(kd_loss(t(3 * S + 5), t(T), 4.0).item(), rel=1e-2)


# ----------------------------------------------------------------------- DIST
def test_dist_matches_numpy_pearson():
    tau = 2.0
    ps, pt = softmax(S / tau), softmax(T / tau)
    inter = 1 - np.mean([np.corrcoef(ps[i], pt[i])[0, 1] for i in range(len(S))])
    intra = 1 - np.mean([np.corrcoef(ps[:, c], pt[:, c])[0, 1] for c in range(S.shape[1])])
    out = run(DIST(DIST.Params(beta=2.0, gamma=0.5, tau=tau), ctx()))
    assert out["dist_inter"].item() == pytest.approx(2.0 * tau**2 * inter, rel=1e-4)
    assert out["dist_intra"].item() == pytest.approx(0.5 * tau**2 * intra, rel=1e-4)


def test_dist_zero_for_linearly_related_probabilities():
    """Pearson correlation ignores scale: a teacher equal to the student gives zero loss."""
    out = run(DIST(DIST.Params(), ctx()), S, S)
    assert out["dist_inter"].item() == pytest.approx(0.0, abs=1e-5)
    assert out["dist_intra"].item() == pytest.approx(0.0, abs=1e-5)


# ----------------------------------------------------------------------- CTKD
def plain_kd(theta, tau_min=1.0, tau_max=21.0):
    tau = tau_min + (tau_max - tau_min) / (1 + math.exp(-theta))
    return tau**2 * np.mean(kl(softmax(T / tau), softmax(S / tau)))


def test_ctkd_loss_is_kd_at_the_learned_temperature():
    m = CTKD(CTKD.Params(tau_init=4.0), ctx())
    assert m.temperature().item() == pytest.approx(4.0, rel=1e-5)
    expected = 16 * np.mean(kl(softmax(T / 4), softmax(S / 4)))
    assert run(m)["ctkd"].item() == pytest.approx(expected, rel=1e-5)


def test_ctkd_default_init_is_official():
    m = CTKD(CTKD.Params(), ctx())  # theta = 1: tau = 1 + 20 * sigmoid(1)
    assert m.temperature().item() == pytest.approx(1 + 20 / (1 + math.exp(-1)), rel=1e-6)


@pytest.mark.parametrize("epoch,lam", [(0, (1 - math.cos(math.pi / 10)) / 2), (4, 0.5), (9, 1.0), (50, 1.0)])
def test_ctkd_cosine_curriculum(epoch, lam):
    assert cosine_lambda(epoch, 10, 1.0) == pytest.approx(lam, abs=1e-12)


def test_ctkd_temperature_gradient_is_reversed():
    m = CTKD(CTKD.Params(tau_init=6.0), ctx())
    m.on_epoch_start(4)  # lambda = 0.5
    s = t(S).requires_grad_(True)
    loss = m({"y": torch.tensor(Y)}, Outputs(logits=s), [Outputs(logits=t(T))])["ctkd"]
    loss.backward()
    theta = m.theta.item()
    h = 1e-4
    numeric = (plain_kd(theta + h) - plain_kd(theta - h)) / (2 * h)  # d(plain loss)/d(theta)
    assert abs(numeric) > 1e-3
    assert np.sign(m.theta.grad.item()) == -np.sign(numeric)
    assert m.theta.grad.item() == pytest.approx(-0.5 * numeric, rel=1e-2)
    # The student's gradient is the ordinary one (the reversal acts on the temperature only).
    s2 = t(S).requires_grad_(True)
    kd_loss(s2, t(T), m.temperature().item()).backward()
    assert torch.allclose(s.grad, s2.grad, atol=1e-6)


def test_ctkd_temperature_stays_in_range():
    m = CTKD(CTKD.Params(tau_min=2.0, tau_max=8.0), ctx())
    with torch.no_grad():
        m.theta.fill_(60.0)
        assert m.temperature().item() <= 8.0
        m.theta.fill_(-60.0)
        assert m.temperature().item() >= 2.0


def test_ctkd_rejects_bad_range():
    with pytest.raises(ValidationError, match="tau_max"):
        MethodSpec(name="ctkd", tau_min=5, tau_max=2)
    with pytest.raises(ValidationError, match="tau_init"):
        MethodSpec(name="ctkd", tau_init=30)
