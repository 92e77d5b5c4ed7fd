"""Token-level divergences against a sparse teacher (a top-k or sampled cache): the k + 1
bucket distributions against an independent numpy computation (masked positions included),
k = V against the dense loss, chunked = unchunked, and the sampled forward-KL estimate
unbiased in value and gradient (averaged over many draws against the exact value)."""

import numpy as np
import pytest
import torch

from kdlab.errors import KdlabError
from kdlab.knowledge.sparse_logits import SampledLogits, SparseTeacherOutputs, TopKLogits, sample_fields, topk_fields
from kdlab.methods import token_divergences as td
from kdlab.methods.base import MethodContext, Outputs
from kdlab.methods.lm_distill import ForwardKL, ReverseKL

rng = np.random.default_rng(3)
B, T, V, K = 2, 4, 12, 4
S = rng.normal(size=(B, T, V)) * 2
TT = rng.normal(size=(B, T, V)) * 3
MASK = np.ones((B, T), bool)
MASK[0, 0] = MASK[1, 3] = False  # e.g. a prompt token and padding


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def buckets(s, t, k):
    """Numpy: the teacher's top-k probabilities plus its tail mass, the student's probabilities
    of the same tokens plus its own tail mass."""
    p, q = softmax(t), softmax(s)
    top = np.argsort(-t)[:k]
    P = np.append(p[top], 1 - p[top].sum())
    Q = np.append(q[top], 1 - q[top].sum())
    return P, Q


def kl(a, b):
    return float(np.sum(a * np.log(a / b)))


def akl(P, Q, mu=0.5):
    order = np.argsort(-P)
    above = np.concatenate([[0.0], np.cumsum(P[order])[:-1]])
    head = np.zeros(len(P), bool)
    head[order[above < mu]] = True
    gap = np.abs(P - Q)
    gh, gt = gap[head].sum(), gap[~head].sum()
    return (gh * kl(P, Q) + gt * kl(Q, P)) / (gh + gt)


REFERENCE = {
    "fkl": (td.forward_kl, lambda P, Q: kl(P, Q)),
    "rkl": (td.reverse_kl, lambda P, Q: kl(Q, P)),
    "jsd": (lambda q, p: td.generalized_jsd(q, p, 0.3),
            lambda P, Q: 0.3 * kl(P, 0.3 * P + 0.7 * Q) + 0.7 * kl(Q, 0.3 * P + 0.7 * Q)),
    "skew_fkl": (lambda q, p: td.skew_forward_kl(q, p, 0.1), lambda P, Q: kl(P, 0.1 * P + 0.9 * Q)),
    "skew_rkl": (lambda q, p: td.skew_reverse_kl(q, p, 0.1), lambda P, Q: kl(Q, 0.9 * P + 0.1 * Q)),
    "tvd": (td.total_variation, lambda P, Q: 0.5 * np.abs(P - Q).sum()),
    "akl": (lambda q, p: td.adaptive_kl(q, p, 0.5), akl),
}


def topk64(t, k):
    values, indices = t.topk(k, -1)
    rest = t.scatter(-1, indices, float("-inf")).logsumexp(-1)
    return TopKLogits(values, indices, rest)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_topk_divergences_on_k_plus_one_buckets_match_numpy(name):
    per_token, ref = REFERENCE[name]
    expected = np.mean([ref(*buckets(S[b, i], TT[b, i], K)) for b in range(B) for i in range(T) if MASK[b, i]])
    s = torch.tensor(S, requires_grad=True)
    teacher = topk64(torch.tensor(TT), K)
    mask = torch.tensor(MASK)
    whole = td.divergence_loss(s, teacher, mask, per_token, chunk_tokens=None)
    assert whole.item() == pytest.approx(expected, rel=1e-10)
    (g_whole,) = torch.autograd.grad(whole, s)
    chunked = td.divergence_loss(s, teacher, mask, per_token, chunk_tokens=3)
    (g_chunk,) = torch.autograd.grad(chunked, s)
    assert chunked.item() == pytest.approx(expected, rel=1e-10)
    assert torch.allclose(g_chunk, g_whole, rtol=1e-10, atol=1e-12)
    assert float(g_whole[0, 0].abs().max()) == 0.0 and float(g_whole[1, 3].abs().max()) == 0.0  # masked


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_topk_with_k_equal_to_the_vocabulary_is_the_full_divergence(name):
    per_token, _ = REFERENCE[name]
    s, t, mask = torch.tensor(S), torch.tensor(TT), torch.tensor(MASK)
    dense = td.divergence_loss(s, t, mask, per_token, chunk_tokens=None)
    full = td.divergence_loss(s, topk64(t, V), mask, per_token, chunk_tokens=None)  # the tail is empty
    assert full.item() == pytest.approx(dense.item(), rel=1e-12)


def test_the_cached_fields_restore_the_teacher_exactly_at_k_equal_v():
    t = torch.tensor(TT, dtype=torch.float32)
    f = topk_fields(t, V)
    assert torch.equal(TopKLogits(f["values"], f["indices"], f["rest"]).dense(V), t)


def test_the_sampled_forward_kl_is_unbiased_in_value_and_gradient():
    """Draws of k ids from p: the mean of many estimates is the exact KL(p ‖ q), and the mean
    gradient in the student logits is the exact gradient q − p (within 4 standard errors)."""
    t = torch.tensor(TT[0])  # (T, V) rows
    p = torch.softmax(t, -1)
    s0 = torch.tensor(S[0])
    exact = (p * (p.log() - torch.log_softmax(s0, -1))).sum(-1)
    draws, k = 20000, 3
    fields = sample_fields(t.expand(draws, T, V), k, torch.Generator().manual_seed(0))
    entropy = -(p * p.log()).sum(-1)
    assert torch.allclose(fields["entropy"][0].double(), entropy, rtol=1e-6)
    s = s0.expand(draws, T, V).clone().requires_grad_(True)
    est = td.token_values(s.reshape(-1, V), SampledLogits(fields["ids"].reshape(-1, k), entropy.repeat(draws)),
                          td.forward_kl, 1.0).reshape(draws, T)
    (grad,) = torch.autograd.grad(est.sum(), s)
    se = est.detach().std(0) / draws**0.5
    assert bool(((est.detach().mean(0) - exact).abs() < 4 * se).all())
    assert float(est.detach().std(0).min()) > 0  # one draw is not the exact value: it is an estimate
    g_exact = torch.softmax(s0, -1) - p  # d KL(p ‖ q) / d s
    g_se = (p * (1 - p) / (k * draws)).sqrt()  # the gradient's randomness is the draws' frequencies
    assert bool(((grad.mean(0) - g_exact).abs() <= 4 * g_se + 1e-12).all())


def ctx():
    return MethodContext(num_classes=V, student=None, teachers=[], train_size=B, epochs=1, device=torch.device("cpu"))


def test_methods_read_a_sparse_teacher_and_refuse_what_it_cannot_give():
    s = torch.tensor(S, dtype=torch.float32)
    y = torch.where(torch.tensor(MASK), 1, -100)
    top = topk64(torch.tensor(TT, dtype=torch.float32), K)
    out = ForwardKL(ForwardKL.Params(), ctx())({"y": y}, Outputs(logits=s), [SparseTeacherOutputs(top, V)])
    expected = np.mean([kl(*buckets(S[b, i], TT[b, i], K)) for b in range(B) for i in range(T) if MASK[b, i]])
    assert out["fkl"].item() == pytest.approx(expected, rel=1e-5)
    sampled = SparseTeacherOutputs(SampledLogits(torch.zeros(B, T, 2, dtype=torch.int32), torch.zeros(B, T)), V)
    with pytest.raises(KdlabError, match="forward KL only"):
        ReverseKL(ReverseKL.Params(), ctx())({"y": y}, Outputs(logits=s), [sampled])
    with pytest.raises(KdlabError, match="temperature 1"):
        ForwardKL(ForwardKL.Params(tau=2.0), ctx())({"y": y}, Outputs(logits=s), [SparseTeacherOutputs(top, V)])
    with pytest.raises(KdlabError, match="only `fkl` reads it"):
        sampled.logits  # a method that reads dense logits (kd) is told why not
    # A method reading dense logits from a top-k teacher gets the stored probabilities + an even tail.
    dense = SparseTeacherOutputs(top, V).logits
    p = torch.softmax(dense, -1)
    assert torch.allclose(p.gather(-1, top.indices), torch.softmax(torch.tensor(TT, dtype=torch.float32), -1).gather(-1, top.indices))


def test_the_student_buckets_gradient_is_the_autograd_one():
    """The closed-form backward of the student's k + 1 log-probabilities against torch's
    gradcheck (finite differences, float64), with a tail that holds almost nothing."""
    from kdlab.methods.sparse_divergences import _StudentBuckets

    s = torch.tensor(S.reshape(-1, V)[:5], requires_grad=True)
    idx = torch.tensor(TT.reshape(-1, V)[:5]).topk(K, -1).indices
    assert torch.autograd.gradcheck(lambda x: _StudentBuckets.apply(x, idx), (s,))
    peaked = s.detach().clone()
    peaked.scatter_(-1, idx, 30.0)  # the tail's mass ~ e^-30
    assert torch.autograd.gradcheck(lambda x: _StudentBuckets.apply(x, idx), (peaked.requires_grad_(True),))
    log_q = _StudentBuckets.apply(peaked, idx)
    expected = torch.log_softmax(peaked, -1).detach()
    tail = expected.scatter(-1, idx, float("-inf")).logsumexp(-1)
    assert torch.allclose(log_q[:, -1], tail, rtol=1e-12) and torch.allclose(log_q[:, :-1], expected.gather(-1, idx))
