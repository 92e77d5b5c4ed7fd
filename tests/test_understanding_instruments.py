"""Instruments: w against autograd, the record_w hook, the geometry score, ECE, teacher stats."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlab.config.schema import MethodSpec
from kdlab.knowledge.instruments import (
    expected_calibration_error,
    geometry_score,
    cosine_similarity_matrix,
    rescaling_weight,
    superclass_comembership,
    teacher_warnings,
    wrong_class_stats,
)
from kdlab.methods.base import MethodContext, Outputs
from kdlab.methods.logit_kd import kd_loss
from kdlab.methods.probes import RecordW

Z = torch.tensor([[1.0, 0.2, -0.5, 0.3], [0.1, 2.0, 0.4, -1.0], [-0.3, 0.0, 0.5, 1.5]])
ZT = torch.tensor([[3.0, 0.5, -1.0, 0.0], [0.0, 0.4, 0.3, -0.2], [0.2, 0.1, 1.0, 2.5]])
Y = torch.tensor([0, 2, 3])
LAM = 0.7


def manual_objective(z, zt, y, lam):
    """(1-λ)·CE + λ·KL(q || p) at τ = 1, written out without kdlab's losses."""
    logp = z - torch.logsumexp(z, 1, keepdim=True)
    q = torch.exp(zt - torch.logsumexp(zt, 1, keepdim=True))
    ce = -logp[torch.arange(len(y)), y].mean()
    kl = (q * (torch.log(q) - logp)).sum(1).mean()
    return (1 - lam) * ce + lam * kl


def test_w_formula_equals_the_autograd_gradient_ratio_on_the_true_logit():
    z = Z.clone().requires_grad_(True)
    manual_objective(z, ZT, Y, LAM).backward()
    rows = torch.arange(3)
    g_t = z.grad[rows, Y] * len(Y)  # per-example gradient (the loss is a batch mean)
    p_t = torch.softmax(Z, 1)[rows, Y]
    q_t = torch.softmax(ZT, 1)[rows, Y]
    ratio = g_t / (p_t - 1)  # plain CE's true-logit gradient is p_t - 1
    assert torch.allclose(ratio, rescaling_weight(p_t, q_t, LAM), atol=1e-5)
    # A confident teacher (q_t → 1) leaves CE's weight; an unsure one lowers it.
    assert float(rescaling_weight(torch.tensor(0.3), torch.tensor(1.0), LAM)) == pytest.approx(1.0)
    assert float(rescaling_weight(torch.tensor(0.3), torch.tensor(0.2), LAM)) < 1.0


def test_record_w_hook_measures_w_during_a_real_backward():
    ctx = MethodContext(num_classes=4, student=nn.Identity(), teachers=[nn.Identity()], train_size=10, epochs=1,
                        device=torch.device("cpu"))
    rec = RecordW(MethodSpec(name="record_w").build_params(), ctx)
    z = Z.clone().requires_grad_(True)
    batch = {"y": Y, "index": torch.tensor([7, 2, 5])}
    assert rec(batch, Outputs(logits=z), [Outputs(logits=ZT)]) == {}
    loss = (1 - LAM) * F.cross_entropy(z, Y) + LAM * kd_loss(z, ZT, 1.0)
    loss.backward()
    p = torch.softmax(Z, 1).numpy()
    q = torch.softmax(ZT, 1).numpy()
    for row, idx in enumerate([7, 2, 5]):
        t = int(Y[row])
        expect = 1 - LAM * (1 - q[row, t]) / (1 - p[row, t])
        assert float(rec.w_last[idx]) == pytest.approx(expect, abs=1e-5)
        assert float(rec.q_t[idx]) == pytest.approx(q[row, t], abs=1e-6)
        assert int(rec.w_count[idx]) == 1
    w, qq = rec.mean_arrays()
    assert len(w) == 3 and int(rec.w_count[0]) == 0  # unvisited examples are left out
    # Plain CE: w is exactly 1.
    rec2 = RecordW(MethodSpec(name="record_w").build_params(), ctx)
    z2 = Z.clone().requires_grad_(True)
    rec2(batch, Outputs(logits=z2), [Outputs(logits=ZT)])
    F.cross_entropy(z2, Y).backward()
    assert np.allclose(rec2.mean_arrays()[0], 1.0, atol=1e-6)


def test_geometry_score_block_structure_is_high_and_random_is_near_zero():
    sup = [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    ref = superclass_comembership(sup)
    assert ref[0, 1] == 1 and ref[0, 3] == 0
    assert geometry_score(ref, ref) == pytest.approx(1.0)
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 64, generator=g) * 3
    vecs = centres[torch.tensor(sup)] + 0.3 * torch.randn(12, 64, generator=g)
    assert geometry_score(cosine_similarity_matrix(vecs), ref) > 0.9
    # Unrelated random class vectors: no structure (|r| small; many classes, high dimension).
    sup_big = [c // 5 for c in range(60)]
    rand = torch.randn(60, 2000, generator=g)
    assert abs(geometry_score(cosine_similarity_matrix(rand), superclass_comembership(sup_big))) < 0.1
    # Anti-aligned structure scores negative.
    assert geometry_score(1 - ref, ref) == pytest.approx(-1.0)


def test_ece_hand_case():
    probs = torch.tensor([
        [0.9, 0.05, 0.05, 0.0],  # conf .9, correct
        [0.9, 0.1, 0.0, 0.0],  # conf .9, wrong (y = 1)
        [0.6, 0.2, 0.1, 0.1],  # conf .6, correct
        [0.3, 0.25, 0.25, 0.2],  # conf .3, correct
    ])  # fmt: skip
    y = torch.tensor([0, 1, 0, 0])
    # bins: {.9,.9}: |0.5-0.9|·2/4 = .2; {.6}: |1-.6|/4 = .1; {.3}: |1-.3|/4 = .175
    assert expected_calibration_error(probs, y, bins=10) == pytest.approx(0.475, abs=1e-6)
    perfect = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(perfect, torch.tensor([0, 1])) == pytest.approx(0.0)


def test_wrong_class_stats_and_warnings():
    probs = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.5, 0.5, 0.0, 0.0]])
    st = wrong_class_stats(probs, torch.tensor([0, 0]))
    assert float(st["q_t"][0]) == pytest.approx(0.7)
    assert float(st["wrong_entropy"][0]) == pytest.approx(-3 * 0.1 * math.log(0.1), rel=1e-5)
    assert float(st["wrong_uniformity"][0]) == pytest.approx(1.0, abs=1e-6)  # uniform wrong mass
    assert float(st["wrong_uniformity"][1]) == pytest.approx(0.0, abs=1e-6)  # all on one class
    over = teacher_warnings(0.99, 0.02, 0.5, tau=1.0)
    assert len(over) == 1 and "over-confident" in over[0] and "temperature" in over[0]
    flat = teacher_warnings(0.8, 0.5, 0.99, tau=1.0)
    assert len(flat) == 1 and "label-smoothing" in flat[0]
    assert teacher_warnings(0.8, 0.5, 0.5, tau=1.0) == []
