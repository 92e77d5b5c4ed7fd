"""Token-level divergences against a sparse teacher (`kdlab.knowledge.sparse_logits`), per row
of student logits s (n, V) at temperature 1.

**Top-k: k + 1 buckets.** The teacher is known on its top-k tokens K and as one lump outside
them, so both distributions are compared on the same k + 1 outcomes:

    P = (p_{K_1}, ..., p_{K_k}, 1 − Σ_{v∈K} p_v),  log p_{K_j} = t_j − L,  log P_tail = rest − L,
        L = log(Σ_j exp t_j + exp rest)  (the teacher's log-partition over all V tokens)
    Q = (q_{K_1}, ..., q_{K_k}, 1 − Σ_{v∈K} q_v),  log Q_tail = logsumexp_{v∉K} s_v − logsumexp_v s_v

and any divergence D of `token_divergences` is D(P, Q) on these k + 1 entries. The student is
free in how it spreads its tail mass (no uniform tail is imposed on it); by the data-processing
inequality each f-divergence (all but AKL) on the lumped distributions is at most the
full-vocabulary one, and with k = V (no tail) every divergence is the full one.

**Sampled: unbiased forward KL.** With x_1..x_k drawn from p with replacement,

    KL̂ = −(1/k) Σ_j log q_{x_j} − H(p),   E[KL̂] = Σ_v p_v (−log q_v) − H(p) = KL(p ‖ q),

and its gradient in s is unbiased too (linear in the draws). Only the forward KL (and other
losses linear in p) has such an estimator from draws of p: the others need p where q has mass.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from kdlab.knowledge.sparse_logits import SampledLogits, TopKLogits

# log-probability standing in for log 0 (an empty tail): exp() of it is 0 in float32, and a
# difference of two such terms stays finite, so 0·(log 0 − log 0) adds 0, never NaN.
LOG_ZERO = -1e30


class _StudentBuckets(torch.autograd.Function):
    """log Q (n, k + 1) from student logits s (n, V) and the top-k ids, with one exponential
    pass over the vocabulary and a closed-form backward (autograd through two logsumexps and a
    scatter cost about as much as the dense divergence). With e = exp(s − max), z = Σ e and
    z_tail = Σ_{v∉K} e_v (summed directly, so no cancellation however small the tail):

        log Q_j = s_Kj − log z,   log Q_tail = log z_tail − log z
        ∂L/∂s_v = [v = K_j]·g_j + [v ∉ K]·e_v·g_tail / z_tail − q_v·Σ_j g_j   (g = ∂L/∂log Q)
    """

    @staticmethod
    def forward(ctx, s: Tensor, idx: Tensor):
        m = s.amax(-1, keepdim=True)
        e = (s - m).exp_()
        z = e.sum(-1, keepdim=True)
        e_tail = e.scatter(-1, idx, 0.0)
        z_tail = e_tail.sum(-1, keepdim=True)
        log_z = m + z.log()
        log_q = torch.cat([s.gather(-1, idx), m + z_tail.log()], -1) - log_z
        ctx.save_for_backward(e, z, e_tail, z_tail, idx)
        return log_q

    @staticmethod
    def backward(ctx, g: Tensor):
        e, z, e_tail, z_tail, idx = ctx.saved_tensors
        grad = e_tail * (g[:, -1:] / z_tail.clamp_min(torch.finfo(z_tail.dtype).tiny))
        grad -= e * (g.sum(-1, keepdim=True) / z)
        return grad.scatter_add_(-1, idx, g[:, :-1]), None


def topk_buckets(s: Tensor, t: TopKLogits, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(log Q, log P), each (n, k + 1): the student's and the teacher's log-probabilities of
    the teacher's top-k tokens and of everything else (the last column)."""
    log_q = _StudentBuckets.apply(s.to(dtype), t.indices.long())
    tp = torch.cat([t.values.to(dtype), t.rest.to(dtype).unsqueeze(-1)], -1)
    log_p = tp - tp.logsumexp(-1, keepdim=True)
    return log_q.clamp_min(LOG_ZERO), log_p.clamp_min(LOG_ZERO)


def sampled_forward_kl(s: Tensor, t: SampledLogits, dtype: torch.dtype) -> Tensor:
    """Per row, the unbiased estimate −mean_j log q_{x_j} − H(p) of KL(p ‖ q)."""
    log_q = torch.log_softmax(s.to(dtype), dim=-1)
    return -log_q.gather(-1, t.ids.long()).mean(-1) - t.entropy.to(dtype)


def token_values(s: Tensor, t: TopKLogits | SampledLogits, per_token: Callable[[Tensor, Tensor], Tensor],
                 dtype: torch.dtype) -> Tensor:
    """Per-row divergence between a sparse teacher and the student logits (temperature 1). A
    sampled teacher gives the forward KL estimate whatever `per_token` is: the methods allow
    only `fkl` on one."""
    if isinstance(t, TopKLogits):
        return per_token(*topk_buckets(s, t, dtype))
    return sampled_forward_kl(s, t, dtype)
