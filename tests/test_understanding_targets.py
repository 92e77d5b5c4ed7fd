"""Synthetic teachers (kd_pt, kd_sim, kd_pt_sim): targets and losses on fixed tensors, checked
against hand-derived values and a plain numpy re-implementation."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from kdlab.config.schema import MethodSpec
from kdlab.data.base import Split
from kdlab.methods.base import MethodContext, Outputs
from kdlab.methods.synthetic_teachers import (
    KDPartialSimilarity,
    KDPartialTeacher,
    KDSimilarity,
    partial_teacher_targets,
    pt_sim_targets,
    similarity_targets,
    soft_ce_kl,
)


def test_partial_teacher_keeps_q_t_and_spreads_the_rest_uniformly():
    q = torch.tensor([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1]])
    r = partial_teacher_targets(q, torch.tensor([0, 1]))
    assert torch.allclose(r, torch.tensor([[0.7, 0.15, 0.15], [0.4, 0.2, 0.4]]))
    assert torch.allclose(r.sum(1), torch.ones(2))


def test_similarity_targets_hand_values():
    # Rows 0 and 1 point the same way (cosine 1), row 2 is orthogonal to both.
    v = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    s = similarity_targets(v, sim_tau=1.0)
    e = math.e
    expect = torch.tensor(
        [[e / (2 * e + 1), e / (2 * e + 1), 1 / (2 * e + 1)],
         [e / (2 * e + 1), e / (2 * e + 1), 1 / (2 * e + 1)],
         [1 / (e + 2), 1 / (e + 2), e / (e + 2)]]
    )  # fmt: skip
    assert torch.allclose(s, expect, atol=1e-6)
    # A lower similarity temperature sharpens towards the class itself (and its twin).
    sharp = similarity_targets(v, sim_tau=0.1)
    assert sharp[2, 2] > s[2, 2] and torch.allclose(sharp.sum(1), torch.ones(3))


def test_pt_sim_spreads_wrong_mass_by_similarity():
    q = torch.tensor([[0.6, 0.3, 0.1]])
    sim = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    r = pt_sim_targets(q, torch.tensor([0]), sim)
    assert torch.allclose(r, torch.tensor([[0.6, 0.4 * 0.6, 0.4 * 0.4]]))
    assert float(r.sum()) == pytest.approx(1.0)


def np_loss(z, r, tau):
    z = np.asarray(z, float) / tau
    logp = z - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)) - z.max(1, keepdims=True)
    r = np.asarray(r, float)
    kl = np.where(r > 0, r * (np.log(np.where(r > 0, r, 1)) - logp), 0.0).sum(1)
    return kl.mean() * tau * tau


def test_soft_ce_kl_matches_numpy_including_zero_targets():
    z = torch.tensor([[1.0, -0.5, 2.0], [0.3, 0.2, -1.0]])
    r = torch.tensor([[0.0, 0.5, 0.5], [0.2, 0.3, 0.5]])
    for tau in (1.0, 3.0):
        assert float(soft_ce_kl(z, r, tau)) == pytest.approx(np_loss(z.numpy(), r.numpy(), tau), rel=1e-5)


def _ctx(teacher, k=3, data=None):
    return MethodContext(num_classes=k, student=nn.Linear(2, k), teachers=[teacher], train_size=4, epochs=1,
                         device=torch.device("cpu"), data=data)


class Head(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.fc = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            self.fc.weight.copy_(w)
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(x)


def test_kd_methods_forward_on_fixed_tensors():
    w = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    teacher = Head(w)
    y = torch.tensor([0, 2])
    batch = {"y": y, "index": torch.tensor([0, 1])}
    zs = torch.tensor([[0.5, 0.1, -0.2], [0.0, 0.3, 0.9]])
    zt = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.5, 1.5]])
    tau, sim_tau = 2.0, 0.5
    qt = np.exp(zt.numpy() / tau)
    qt /= qt.sum(1, keepdims=True)
    wn = w.numpy() / np.linalg.norm(w.numpy(), axis=1, keepdims=True)
    s = np.exp(wn @ wn.T / sim_tau)
    s /= s.sum(1, keepdims=True)
    # Independent targets, row by row.
    pt, ptsim = np.zeros((2, 3)), np.zeros((2, 3))
    for i, t in enumerate(y.tolist()):
        others = [j for j in range(3) if j != t]
        pt[i, t] = ptsim[i, t] = qt[i, t]
        for j in others:
            pt[i, j] = (1 - qt[i, t]) / 2
            ptsim[i, j] = (1 - qt[i, t]) * s[t, j] / sum(s[t, k] for k in others)
    sim_t = s[y.numpy()]
    for cls, name, target in [(KDPartialTeacher, "kd_pt", pt), (KDSimilarity, "kd_sim", sim_t), (KDPartialSimilarity, "kd_pt_sim", ptsim)]:
        params = MethodSpec(name=name, tau=tau, **({"sim_tau": sim_tau} if name != "kd_pt" else {})).build_params()
        m = cls(params, _ctx(teacher))
        m.build(Outputs(logits=zs), [Outputs(logits=zt)])
        out = m(batch, Outputs(logits=zs), [Outputs(logits=zt)])
        assert float(out[name]) == pytest.approx(np_loss(zs.numpy(), target, tau), rel=1e-5), name
        # With alpha the method mixes CE in itself.
        params = MethodSpec(name=name, tau=tau, alpha=0.25).build_params()
        m = cls(params, _ctx(teacher))
        m.build(Outputs(logits=zs), [Outputs(logits=zt)])
        out = m(batch, Outputs(logits=zs), [Outputs(logits=zt)])
        ce = float(torch.nn.functional.cross_entropy(zs, y))
        assert float(out[f"{name}_ce"]) == pytest.approx(0.75 * ce, rel=1e-6)


def test_kd_sim_class_mean_source_when_the_head_is_not_linear():
    # A teacher without `fc`: class vectors are its class-mean distributions on the train split.
    teacher = nn.Sequential(nn.Linear(2, 3, bias=False))
    with torch.no_grad():
        teacher[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    x = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = torch.tensor([0, 0, 1, 2])
    data = SimpleNamespace(train=Split({"x": x, "y": y}), prepare=None)
    m = KDSimilarity(MethodSpec(name="kd_sim", sim_tau=0.5).build_params(), _ctx(teacher, data=data))
    m.build(None, [])
    logits = x.numpy() @ teacher[0].weight.detach().numpy().T
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    means = np.stack([p[y.numpy() == c].mean(0) for c in range(3)])
    mn = means / np.linalg.norm(means, axis=1, keepdims=True)
    s = np.exp(mn @ mn.T / 0.5)
    s /= s.sum(1, keepdims=True)
    assert np.allclose(m.sim.numpy(), s, atol=1e-6)


def _softmax_np(z, tau):
    e = np.exp((z - z.max(1, keepdims=True)) / tau)
    return e / e.sum(1, keepdims=True)


def _class_mean_target_setup():
    # A linear teacher (it has `fc`, so `auto` would use its weight rows; class_mean_target must not).
    w = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.5]])
    teacher = Head(w)
    x = torch.tensor([[1.0, 0.2], [2.0, -0.5], [0.3, 1.0], [1.0, 1.0], [0.0, 2.0], [-1.0, 0.1], [-0.5, 1.5]])
    y = torch.tensor([0, 0, 1, 1, 2, 3, 3])
    data = SimpleNamespace(train=Split({"x": x, "y": y}), prepare=None)
    logits = x.numpy().astype(float) @ w.numpy().astype(float).T
    return teacher, data, x, y, logits


@pytest.mark.parametrize("tau", [1.0, 2.5])
def test_kd_sim_class_mean_target_is_the_class_mean_teacher_distribution(tau):
    teacher, data, x, y, logits = _class_mean_target_setup()
    m = KDSimilarity(MethodSpec(name="kd_sim", tau=tau, sim_tau=0.1, sim_source="class_mean_target").build_params(),
                     _ctx(teacher, k=4, data=data))
    m.build(None, [])
    p = _softmax_np(logits, tau)
    expect = np.stack([p[y.numpy() == c].mean(0) for c in range(4)])
    assert np.allclose(m.sim.numpy(), expect, atol=1e-6)
    assert np.allclose(m.sim.sum(1).numpy(), 1.0, atol=1e-6) and bool((m.sim >= 0).all())
    # The forward target of an example of class c is that row, whatever sim_tau says.
    zs = torch.tensor([[0.5, 0.1, -0.2, 0.0], [0.0, 0.3, 0.9, -1.0]])
    yb = torch.tensor([3, 1])
    out = m({"y": yb, "index": torch.tensor([0, 1])}, Outputs(logits=zs), [Outputs(logits=zs)])
    assert float(out["kd_sim"]) == pytest.approx(np_loss(zs.numpy(), expect[yb.numpy()], tau), rel=1e-5)
    # Not the cosine/softmax of the same class means (the older `class_mean` source).
    old = KDSimilarity(MethodSpec(name="kd_sim", tau=tau, sim_tau=0.1, sim_source="class_mean").build_params(),
                       _ctx(teacher, k=4, data=data))
    old.build(None, [])
    assert not np.allclose(old.sim.numpy(), expect, atol=1e-3)


def test_kd_pt_sim_class_mean_target_keeps_q_t_and_spreads_by_class_mean_wrong_mass():
    tau = 2.0
    teacher, data, x, y, logits = _class_mean_target_setup()
    m = KDPartialSimilarity(MethodSpec(name="kd_pt_sim", tau=tau, sim_source="class_mean_target").build_params(),
                            _ctx(teacher, k=4, data=data))
    m.build(None, [])
    p = _softmax_np(logits, tau)
    means = np.stack([p[y.numpy() == c].mean(0) for c in range(4)])
    zt = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 0.5, 1.5, 0.2], [1.0, 1.0, 1.0, 3.0]])
    yb = torch.tensor([0, 2, 1])
    q = _softmax_np(zt.numpy().astype(float), tau)
    target = np.zeros((3, 4))
    for i, t in enumerate(yb.tolist()):
        others = [j for j in range(4) if j != t]
        target[i, t] = q[i, t]
        wrong = sum(means[t, j] for j in others)
        for j in others:
            target[i, j] = (1 - q[i, t]) * means[t, j] / wrong
    assert np.allclose(target.sum(1), 1.0)
    zs = torch.tensor([[0.5, 0.1, -0.2, 0.0], [0.0, 0.3, 0.9, -1.0], [1.0, -1.0, 0.0, 0.5]])
    out = m({"y": yb, "index": torch.arange(3)}, Outputs(logits=zs), [Outputs(logits=zt)])
    assert float(out["kd_pt_sim"]) == pytest.approx(np_loss(zs.numpy(), target, tau), rel=1e-5)
    # The target itself: a distribution with q_t on the true class.
    r = pt_sim_targets(torch.softmax(zt / tau, 1), yb, m.sim)
    assert np.allclose(r.numpy(), target, atol=1e-6)


def test_diagnose_passes_sim_source_to_the_relationship_rungs():
    from kdlab.pipelines.diagnose import DiagnoseParams, ladder_methods

    rungs = ladder_methods(DiagnoseParams(sim_source="class_mean_target"), ls_eps=0.1)
    for rung, name in (("KD-sim", "kd_sim"), ("KD-pt+sim", "kd_pt_sim")):
        spec = next(m for m in rungs[rung] if m.name == name)
        assert spec.build_params().sim_source == "class_mean_target"
