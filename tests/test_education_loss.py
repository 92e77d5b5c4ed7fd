import math

import numpy as np
import pytest
import torch

from kdlab.pipelines.education.loss import education_loss, mixed_education_loss, sliced_kd_loss


def _softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()


def _reference(z, y, cols, teachers, alpha, tau):
    """Plain-loop re-implementation of alpha*CE + (1-alpha)*tau^2*KL(p_t || softmax(z[S]/tau))."""
    ce, kd = 0.0, 0.0
    for b in range(z.shape[0]):
        p = _softmax(z[b])
        ce += -math.log(p[y[b]])
        q = _softmax(z[b, cols] / tau)
        pt = np.mean([_softmax(t[b] / tau) for t in teachers], axis=0)
        kd += sum(pt[i] * (math.log(pt[i]) - math.log(q[i])) for i in range(len(cols)) if pt[i] > 0)
    n = z.shape[0]
    return alpha * ce / n + (1 - alpha) * tau * tau * kd / n


Z = np.array([[1.0, -0.5, 2.0, 0.3, 0.0], [0.2, 1.5, -1.0, 0.7, 2.2]])
Y = [2, 4]
COLS = [3, 1, 4]
T1 = np.array([[0.5, 1.0, -0.2], [2.0, 0.1, 0.3]])
T2 = np.array([[-1.0, 0.4, 0.9], [0.0, 0.0, 1.5]])


@pytest.mark.parametrize("alpha,tau", [(0.3, 4.0), (0.0, 1.0), (0.7, 2.0)])
def test_education_loss_matches_an_independent_computation(alpha, tau):
    total, terms = education_loss(torch.tensor(Z), torch.tensor(Y), torch.tensor(COLS), [torch.tensor(T1)], alpha, tau)
    assert float(total) == pytest.approx(_reference(Z, Y, COLS, [T1], alpha, tau), rel=1e-6)
    assert float(terms["ce"] + terms["kd"]) == pytest.approx(float(total), rel=1e-6)


def test_kd_softmax_is_renormalised_over_the_slice_only():
    # Changing a logit outside the slice must not change the KD term.
    z2 = Z.copy()
    z2[:, [0, 2]] += 5.0
    a = sliced_kd_loss(torch.tensor(Z), torch.tensor(COLS), [torch.tensor(T1)], 4.0)
    b = sliced_kd_loss(torch.tensor(z2), torch.tensor(COLS), [torch.tensor(T1)], 4.0)
    assert float(a) == pytest.approx(float(b), rel=1e-9)
    # Hand value for one sample: student slice equal to the teacher's logits -> KL 0.
    z = torch.zeros(1, 5)
    z[0, COLS] = torch.tensor(T1[0], dtype=torch.float32)
    assert float(sliced_kd_loss(z, torch.tensor(COLS), [torch.tensor(T1[:1], dtype=torch.float32)], 4.0)) == pytest.approx(0.0, abs=1e-6)


def test_several_teachers_teach_the_mean_of_their_distributions():
    total, _ = education_loss(torch.tensor(Z), torch.tensor(Y), torch.tensor(COLS), [torch.tensor(T1), torch.tensor(T2)], 0.3, 4.0)
    assert float(total) == pytest.approx(_reference(Z, Y, COLS, [T1, T2], 0.3, 4.0), rel=1e-6)


def _mixed_reference(z, y, groups, cols_of, teacher_of, alpha, tau):
    """Plain loop: CE over every sample, each sample's KL against its own group's teacher on
    its own group's slice, both averaged over the whole batch."""
    ce, kd = 0.0, 0.0
    for b in range(z.shape[0]):
        ce += -math.log(_softmax(z[b])[y[b]])
        cols, t = cols_of[groups[b]], teacher_of[groups[b]][b]
        q, pt = _softmax(z[b, cols] / tau), _softmax(t / tau)
        kd += sum(pt[i] * (math.log(pt[i]) - math.log(q[i])) for i in range(len(cols)))
    n = z.shape[0]
    return alpha * ce / n + (1 - alpha) * tau * tau * kd / n


@pytest.mark.parametrize("alpha,tau", [(0.3, 4.0), (0.7, 2.0)])
def test_mixed_loss_distils_each_sample_by_its_own_group(alpha, tau):
    z = np.array([[1.0, -0.5, 2.0, 0.3, 0.0], [0.2, 1.5, -1.0, 0.7, 2.2], [-0.3, 0.8, 0.1, 1.1, -2.0]])
    y, groups = [2, 4, 0], [1, 0, 1]
    cols_of = {0: [3, 4], 1: [0, 1, 2]}
    # Teacher logits for every row (only the rows of the teacher's own group are used).
    teacher_of = {0: np.array([[0.0, 0.0], [1.0, -1.0], [0.0, 0.0]]),
                  1: np.array([[0.5, 1.0, -0.2], [0.0, 0.0, 0.0], [2.0, 0.1, 0.3]])}
    parts = []
    for k in (0, 1):
        rows = torch.tensor([b for b in range(3) if groups[b] == k])
        parts.append((torch.tensor(cols_of[k]), rows, [torch.tensor(teacher_of[k])[rows]]))
    total, terms = mixed_education_loss(torch.tensor(z), torch.tensor(y), parts, alpha, tau)
    assert float(total) == pytest.approx(_mixed_reference(z, y, groups, cols_of, teacher_of, alpha, tau), rel=1e-6)
    assert float(terms["ce"] + terms["kd"]) == pytest.approx(float(total), rel=1e-6)
    # A batch of one group gives the single-group loss.
    one, _ = mixed_education_loss(torch.tensor(Z), torch.tensor(Y), [(torch.tensor(COLS), torch.arange(2), [torch.tensor(T1)])],
                                  alpha, tau)
    assert float(one) == pytest.approx(_reference(Z, Y, COLS, [T1], alpha, tau), rel=1e-6)
