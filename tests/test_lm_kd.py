"""Token-level KD, CE and label smoothing on (B, T, V) language-model logits, against loops."""

import numpy as np
import pytest
import torch

from kdlab.methods.base import MethodContext, Outputs
from kdlab.methods.logit_kd import KD, kd_loss
from kdlab.methods.supervised import CE, LabelSmoothing

rng = np.random.default_rng(0)
B, T, V = 2, 3, 6
S = rng.normal(size=(B, T, V)) * 2
TT = rng.normal(size=(B, T, V)) * 2
Y = rng.integers(0, V, size=(B, T))


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def ctx():
    return MethodContext(num_classes=V, student=None, teachers=[], train_size=B, epochs=1, device=torch.device("cpu"))


def t(a):
    return torch.tensor(a, dtype=torch.float32)


def loop_kd(tau):
    total = 0.0
    for b in range(B):
        for i in range(T):
            pt, ps = softmax(TT[b, i] / tau), softmax(S[b, i] / tau)
            total += tau**2 * sum(pt[v] * (np.log(pt[v]) - np.log(ps[v])) for v in range(V))
    return total / (B * T)  # mean over every token position


def loop_ce(eps=0.0):
    total = 0.0
    for b in range(B):
        for i in range(T):
            logp = np.log(softmax(S[b, i]))
            target = (1 - eps) * np.eye(V)[Y[b, i]] + eps / V
            total -= np.dot(target, logp)
    return total / (B * T)


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_token_level_kd_matches_loop(tau):
    assert kd_loss(t(S), t(TT), tau).item() == pytest.approx(loop_kd(tau), rel=1e-5)
    m = KD(KD.Params(tau=tau), ctx())
    out = m({"y": torch.tensor(Y)}, Outputs(logits=t(S)), [Outputs(logits=t(TT))])
    assert out["kd"].item() == pytest.approx(loop_kd(tau), rel=1e-5)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_ce_and_ls_on_token_logits(eps):
    batch = {"y": torch.tensor(Y)}
    if eps == 0.0:
        got = CE(CE.Params(), ctx())(batch, Outputs(logits=t(S)), [])["ce"]
    else:
        got = LabelSmoothing(LabelSmoothing.Params(eps=eps), ctx())(batch, Outputs(logits=t(S)), [])["ls"]
    assert got.item() == pytest.approx(loop_ce(eps), rel=1e-5)
