"""Self-distillation losses against independent numpy computations on fixed tensors."""

import numpy as np
import pytest
import torch
from torch import nn

from kdlab.data.base import DataBundle, Split
from kdlab.errors import KdlabError
from kdlab.methods.base import MethodContext, Outputs
from kdlab.methods.selfkd_byot import byot_loss
from kdlab.methods.selfkd_cskd import CSKD
from kdlab.methods.selfkd_dlb import DLB
from kdlab.methods.selfkd_pskd import PSKD
from kdlab.methods.selfkd_tfkd import TfKDReg, TfKDSelf, virtual_teacher
from kdlab.pipelines.ban import Ensemble

rng = np.random.default_rng(1)
A = rng.normal(size=(4, 3)) * 2
B = rng.normal(size=(4, 3))
C = rng.normal(size=(4, 3))
Y = np.array([0, 2, 1, 2])


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def ce(z, y):
    return -np.mean(np.log(softmax(z)[np.arange(len(y)), y]))


def kl(p, q):
    return np.mean(np.sum(p * (np.log(p) - np.log(q)), 1))


def t(a):
    return torch.tensor(a, dtype=torch.float32)


def tiny_data(n=12, k=3):
    x = torch.arange(n * 2, dtype=torch.float32).reshape(n, 2)
    y = torch.arange(n) % k
    s = Split({"x": x, "y": y})
    return DataBundle(train=s, val=s, test=s, num_classes=k, input_shape=(2,))


def ctx(data=None, k=3, n=4, epochs=4, student=None, teachers=()):
    return MethodContext(num_classes=k, student=student, teachers=list(teachers), train_size=n, epochs=epochs,
                         device=torch.device("cpu"), data=data)


def test_byot_loss_matches_numpy():
    alpha, tau, beta = 0.3, 2.0, 0.01
    fa, fb, fc = rng.normal(size=(4, 5)), rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    pt = softmax(C / tau)
    h = lambda q: -np.mean(np.sum(pt * np.log(softmax(q / tau)), 1))
    expected_ce = (1 - alpha) * (ce(A, Y) + ce(B, Y) + ce(C, Y))
    expected_kd = alpha * tau**2 * (h(A) + h(B))
    expected_feat = beta * (np.mean(((fa - fc) ** 2).sum(1)) + np.mean(((fb - fc) ** 2).sum(1)))
    got = byot_loss([t(A), t(B)], t(C), [t(fa), t(fb)], t(fc), torch.tensor(Y), alpha, tau, beta)
    for g, e in zip(got, (expected_ce, expected_kd, expected_feat)):
        assert g.item() == pytest.approx(e, rel=1e-5)


def test_byot_final_classifier_is_the_detached_teacher():
    final = t(C).requires_grad_()
    aux = t(A).requires_grad_()
    _, kd, _ = byot_loss([aux], final, [], torch.zeros(4, 5), torch.tensor(Y), 0.5, 3.0, 0.0)
    kd.backward()
    assert final.grad is None and aux.grad.abs().sum() > 0


def test_cs_kd_pairs_same_class_and_loss_matches_numpy():
    data = tiny_data()
    m = CSKD(CSKD.Params(tau=2.0, lam=0.7), ctx(data, n=12))
    m.on_epoch_start(0)
    batch = {"x": data.train["x"][:4], "y": data.train["y"][:4], "index": torch.arange(4)}
    out = m.transform_batch(batch)
    assert len(out["y"]) == 8 and torch.equal(out["y"][4:], out["y"][:4])
    assert torch.equal(data.train["y"][out["index"][4:]], out["y"][:4])
    assert torch.equal(out["x"][4:], data.train["x"][out["index"][4:]])  # no prepare/augment here
    logits = torch.cat([t(A), t(B)])
    res = m(out | {"y": torch.cat([torch.tensor(Y), torch.tensor(Y)])}, Outputs(logits=logits), [])
    assert res["cs_kd_ce"].item() == pytest.approx(ce(A, Y), rel=1e-5)
    assert res["cs_kd"].item() == pytest.approx(0.7 * 4 * kl(softmax(B / 2), softmax(A / 2)), rel=1e-5)


def test_dlb_repeats_the_last_batch_and_targets_its_old_logits():
    data = tiny_data()
    m = DLB(DLB.Params(tau=3.0, lam=0.5), ctx(data, n=12))
    m.on_epoch_start(0)
    b1 = {"x": data.train["x"][:4], "y": data.train["y"][:4], "index": torch.arange(4)}
    o1 = m.transform_batch(b1)
    assert len(o1["y"]) == 4  # nothing to repeat yet
    r1 = m(o1, Outputs(logits=t(A)), [])
    assert r1["dlb"].item() == 0 and r1["dlb_ce"].item() == pytest.approx(ce(A, data.train["y"][:4].numpy()), rel=1e-5)
    b2 = {"x": data.train["x"][4:8], "y": data.train["y"][4:8], "index": torch.arange(4, 8)}
    o2 = m.transform_batch(b2)
    assert torch.equal(o2["index"], torch.arange(8)[[4, 5, 6, 7, 0, 1, 2, 3]])
    z2 = torch.cat([t(B), t(C)])
    r2 = m(o2, Outputs(logits=z2), [])
    y2 = o2["y"].numpy()
    assert r2["dlb_ce"].item() == pytest.approx(ce(np.concatenate([B, C]), y2), rel=1e-5)
    # Soft targets: the logits batch 1 got in the previous step (A), for its repeated samples (C).
    assert r2["dlb"].item() == pytest.approx(0.5 * 9 * kl(softmax(A / 3), softmax(C / 3)), rel=1e-5)


def test_ps_kd_targets_previous_epoch_predictions():
    m = PSKD(PSKD.Params(alpha_T=0.8), ctx(n=6, epochs=4))
    idx = torch.tensor([5, 0, 3, 1])
    y = torch.tensor(Y)
    m.train()
    m.on_epoch_start(0)
    first = m({"y": y, "index": idx}, Outputs(logits=t(A)), [])["ps_kd"].item()
    assert first == pytest.approx(ce(A, Y), rel=1e-5)  # no stored prediction yet: the label itself
    m.on_epoch_start(2)  # epoch e = 3 of E = 4
    a = 0.8 * 3 / 4
    target = (1 - a) * np.eye(3)[Y] + a * softmax(A)
    got = m({"y": y, "index": idx}, Outputs(logits=t(B)), [])["ps_kd"].item()
    assert got == pytest.approx(-np.mean(np.sum(target * np.log(softmax(B)), 1)), rel=1e-5)
    torch.testing.assert_close(m.prev[idx], torch.softmax(t(B), 1))  # now B is the stored prediction
    assert not bool(m.seen[2]) and not bool(m.seen[4])


@pytest.mark.parametrize("a,tau,alpha", [(0.99, 20.0, 0.5), (0.9, 1.0, 0.3)])
def test_tf_kd_reg_matches_numpy(a, tau, alpha):
    K = 3
    pd = np.full((4, K), (1 - a) / (K - 1))
    pd[np.arange(4), Y] = a
    target = softmax(pd / tau)
    expected = (1 - alpha) * ce(A, Y), alpha * 2.0 * kl(target, softmax(A))
    m = TfKDReg(TfKDReg.Params(a=a, tau=tau, alpha=alpha, multiplier=2.0), ctx())
    out = m({"y": torch.tensor(Y)}, Outputs(logits=t(A)), [])
    assert out["tf_kd_ce"].item() == pytest.approx(expected[0], rel=1e-5)
    assert out["tf_kd_reg"].item() == pytest.approx(expected[1], rel=1e-5)
    np.testing.assert_allclose(virtual_teacher(torch.tensor(Y), K, a).numpy(), pd, rtol=1e-6)


def test_tf_kd_self_matches_numpy_and_checks_architecture():
    s, te = nn.Linear(2, 3), nn.Linear(2, 3)
    m = TfKDSelf(TfKDSelf.Params(tau=2.0, alpha=0.9), ctx(student=s, teachers=[te]))
    out = m({"y": torch.tensor(Y)}, Outputs(logits=t(A)), [Outputs(logits=t(B))])
    assert out["tf_kd_ce"].item() == pytest.approx(0.1 * ce(A, Y), rel=1e-5)
    assert out["tf_kd_self"].item() == pytest.approx(0.9 * 4 * kl(softmax(B / 2), softmax(A / 2)), rel=1e-5)
    with pytest.raises(KdlabError, match="same"):
        TfKDSelf(TfKDSelf.Params(), ctx(student=s, teachers=[nn.Linear(2, 3, bias=False)]))


def test_ban_ensemble_averages_probabilities():
    m1, m2 = nn.Linear(2, 3), nn.Linear(2, 3)
    x = torch.randn(5, 2)
    ens = Ensemble([m1, m2])
    p = (torch.softmax(m1(x), 1) + torch.softmax(m2(x), 1)) / 2
    torch.testing.assert_close(torch.softmax(ens(x), 1), p, rtol=1e-5, atol=1e-6)
