"""Subclass head and losses against independent numpy / loop computations."""

import math

import numpy as np
import pytest
import torch

from kdlab.methods.base import MethodContext, Outputs
from kdlab.methods.subclass import SubclassAux, SubclassKD, subclass_aux_loss
from kdlab.models.subclass import SUBCLASS_LAYER, group_logits
from kdlab.registry import MODELS
from kdlab.errors import KdlabError

rng = np.random.default_rng(0)
Z_T = rng.normal(size=(5, 6)) * 2  # 5 examples, C=2 classes × s=3 subclasses
Z_S = rng.normal(size=(5, 6))
Y = np.array([0, 1, 1, 0, 1])


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def t(a):
    return torch.tensor(a, dtype=torch.float32)


def ctx(k=2):
    return MethodContext(num_classes=k, student=None, teachers=[], train_size=5, epochs=1, device=torch.device("cpu"))


def test_grouping_class_probabilities_are_summed_subclass_probabilities():
    p_sub = softmax(Z_T)
    expected = np.stack([p_sub[:, 0:3].sum(1), p_sub[:, 3:6].sum(1)], 1)
    got = torch.softmax(group_logits(t(Z_T), 2, 3), 1).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_subclass_model_outputs_grouped_logits_and_exposes_subclass_logits():
    m = MODELS.get("subclass").obj(num_classes=3, input_shape=(1, 8, 8), base={"name": "cnn2d", "params": {"channels": [4, 8]}}, subclasses=4)
    x = torch.randn(7, 1, 8, 8)
    m.eval()
    z = m.subclass_forward(x)
    assert z.shape == (7, 12) and m.fc.out_features == 12
    p = torch.softmax(z, 1).reshape(7, 3, 4).sum(-1)
    torch.testing.assert_close(torch.softmax(m(x), 1), p, rtol=1e-5, atol=1e-6)
    assert m.hint_points == ["base.layer1", "base.layer2"]
    assert SUBCLASS_LAYER in dict(m.named_modules())


def test_subclass_model_rejects_bad_base():
    with pytest.raises(KdlabError):
        MODELS.get("subclass").obj(num_classes=2, input_shape=(64,), base={"name": "mlp", "params": {"nope": 1}})
    with pytest.raises(KdlabError):
        MODELS.get("subclass").obj(num_classes=2, input_shape=(64,), base={"params": {}})


def aux_loop(z, T, eps):
    """L_aux written out example by example, as in the paper."""
    B, N = len(z), len(z[0])
    v = []
    for i in range(B):
        mu = sum(z[i]) / N
        var = sum((a - mu) ** 2 for a in z[i]) / N
        v.append([(a - mu) / math.sqrt(var + eps) / math.sqrt(T * N) for a in z[i]])
    total = 0.0
    for i in range(B):
        dots = [sum(v[i][k] * v[j][k] for k in range(N)) for j in range(B)]
        m = max(dots)
        total += m + math.log(sum(math.exp(d - m) for d in dots))
    return total / B - 1.0 / T - math.log(B)


@pytest.mark.parametrize("T", [1.0, 0.3])
def test_aux_loss_matches_loop(T):
    got = subclass_aux_loss(t(Z_T), T, 1e-6).item()
    assert got == pytest.approx(aux_loop(Z_T.tolist(), T, 1e-6), rel=1e-5, abs=1e-6)


def test_aux_loss_uses_1_over_sqrt_N_normalisation():
    # The port that divides by std only (no 1/sqrt(N)) gives a different value.
    z = t(Z_T)
    v = (z - z.mean(1, keepdim=True)) / z.std(1, unbiased=False, keepdim=True)
    wrong = torch.logsumexp(v @ v.t(), 1).mean() - 1 - math.log(5)
    assert abs(subclass_aux_loss(z, 1.0).item() - wrong.item()) > 0.1


def test_aux_loss_near_zero_floor_for_orthogonal_and_beta_scales():
    # Distinct one-hot-like codes: v_i·v_j small for i≠j, v_i·v_i = 1/T -> L close to its floor.
    z = torch.eye(6) * 50
    floor = subclass_aux_loss(z, 0.05).item()
    same = subclass_aux_loss(torch.ones(6, 1) * torch.arange(6.0), 0.05).item()  # all examples alike
    assert floor < same
    m = SubclassAux(SubclassAux.Params(beta=0.5, temperature=0.3), ctx())
    out = m({"y": torch.tensor(Y)}, Outputs(logits=None, features={SUBCLASS_LAYER: t(Z_T)}), [])
    assert out["subclass_aux"].item() == pytest.approx(0.5 * aux_loop(Z_T.tolist(), 0.3, 1e-6), rel=1e-5)


@pytest.mark.parametrize("alpha,tau", [(0.5, 4.0), (0.2, 1.0)])
def test_subclass_kd_matches_numpy(alpha, tau):
    pt, ps = softmax(Z_T / tau), softmax(Z_S / tau)
    h = -np.mean(np.sum(pt * np.log(ps), 1))
    grouped = np.log(np.stack([np.exp(Z_S[:, :3]).sum(1), np.exp(Z_S[:, 3:]).sum(1)], 1))
    ce = -np.mean(np.log(softmax(grouped)[np.arange(5), Y]))
    m = SubclassKD(SubclassKD.Params(alpha=alpha, tau=tau), ctx())
    s = Outputs(logits=group_logits(t(Z_S), 2, 3), features={SUBCLASS_LAYER: t(Z_S)})
    te = Outputs(logits=group_logits(t(Z_T), 2, 3), features={SUBCLASS_LAYER: t(Z_T)})
    out = m({"y": torch.tensor(Y)}, s, [te])
    assert out["subclass_kd"].item() == pytest.approx(alpha * tau**2 * h, rel=1e-5)
    assert out["subclass_ce"].item() == pytest.approx((1 - alpha) * ce, rel=1e-5)


def test_subclass_kd_without_head_is_a_clear_error():
    m = SubclassKD(SubclassKD.Params(), ctx())
    with pytest.raises(KdlabError, match="subclass head"):
        m({"y": torch.tensor(Y)}, Outputs(logits=t(Z_S[:, :2])), [Outputs(logits=t(Z_T[:, :2]))])
