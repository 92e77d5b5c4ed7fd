"""KD and LS losses against independent numpy computations on fixed tensors."""

import numpy as np
import pytest
import torch

from kdlab.methods.base import MethodContext, Outputs
from kdlab.methods.logit_kd import KD, kd_loss
from kdlab.methods.supervised import CE, LabelSmoothing

S = np.array([[2.0, -1.0, 0.5, 0.0], [0.1, 0.2, 3.0, -2.0], [-1.0, 1.0, 1.0, 0.0]])
T = np.array([[3.0, 0.0, 1.0, -1.0], [0.0, 1.0, 2.0, 0.5], [0.0, 2.0, -1.0, 1.0]])
Y = np.array([0, 2, 1])


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def ctx(k=4):
    return MethodContext(num_classes=k, student=None, teachers=[], train_size=3, epochs=1, device=torch.device("cpu"))


def t(a):
    return torch.tensor(a, dtype=torch.float32)


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_kd_matches_hand_formula(tau):
    pt, ps = softmax(T / tau), softmax(S / tau)
    expected = tau**2 * np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), axis=1))
    got = kd_loss(t(S), t(T), tau).item()
    assert got == pytest.approx(expected, rel=1e-5)
    # The reversed KL(student || teacher) is a different number: the order matters.
    reversed_kl = tau**2 * np.mean(np.sum(ps * (np.log(ps) - np.log(pt)), axis=1))
    assert abs(got - reversed_kl) > 1e-3


def test_kd_mix_is_the_config_weights_not_a_parameter():
    """KD has no `alpha` of its own: the CE/KD mix is the methods' weights, in one place."""
    from kdlab.config.schema import MethodSpec

    with pytest.raises(Exception, match="no hyper-parameter 'alpha'"):
        MethodSpec(name="kd", tau=2.0, alpha=0.7)


def test_kd_zero_when_student_equals_teacher():
    assert kd_loss(t(T), t(T), 3.0).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_label_smoothing_matches_hand_formula(eps):
    K = 4
    target = (1 - eps) * np.eye(K)[Y] + eps / K
    expected = -np.mean(np.sum(target * np.log(softmax(S)), axis=1))
    m = LabelSmoothing(LabelSmoothing.Params(eps=eps), ctx())
    got = m({"y": torch.tensor(Y)}, Outputs(logits=t(S)), [])["ls"].item()
    assert got == pytest.approx(expected, rel=1e-5)


def test_ce_matches_hand_formula():
    expected = -np.mean(np.log(softmax(S)[np.arange(3), Y]))
    got = CE(CE.Params(), ctx())({"y": torch.tensor(Y)}, Outputs(logits=t(S)), [])["ce"].item()
    assert got == pytest.approx(expected, rel=1e-5)
