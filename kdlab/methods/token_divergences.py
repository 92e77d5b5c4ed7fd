"""Token-level divergences between a teacher's and a student's next-token distributions, and
the one chunked routine that computes any of them with bounded memory.

At each unmasked token position i: p_i = softmax(t_i / τ) (teacher), q_i = softmax(s_i / τ)
(student), over the vocabulary V. Per-token values (all in log space, so nothing underflows at
a 128k vocabulary; the mixtures through logaddexp):

    forward KL        KL(p ‖ q) = Σ_v p (log p − log q)
    reverse KL        KL(q ‖ p)
    JSD(β)            m = β·p + (1−β)·q;  β·KL(p ‖ m) + (1−β)·KL(q ‖ m);  β = 0 is forward KL
                      and β = 1 reverse KL (GKD / TRL's end points: the formula itself → 0 there)
    skew KL(α)        KL(p ‖ α·p + (1−α)·q)        (α = 0: forward KL; α = 1: 0)
    skew reverse(α)   KL(q ‖ (1−α)·p + α·q)        (α = 0: reverse KL; α = 1: 0)
    total variation   ½ Σ_v |p − q|
    AKL(μ)            (g_head·KL(p‖q) + g_tail·KL(q‖p)) / (g_head + g_tail), weights detached;
                      head = the fewest top tokens of p whose mass reaches μ (see adaptive_kl)

**Reduction, the same for every divergence**: sum over the vocabulary, mean over the unmasked
tokens of the batch (every unmasked token weighs the same, whatever its sequence). The value is
*not* multiplied by τ² (the LLM papers' convention: GKD, DistiLLM, MiniLLM run at τ = 1);
Hinton's `kd` keeps τ², so at τ ≠ 1 `fkl` = `kd` / τ² on the same tokens.

**Memory**: `divergence_loss` gathers the unmasked token rows and processes them `chunk_tokens`
at a time inside one autograd Function that computes each chunk's value *and* its gradient with
respect to the logits in the forward pass (the chunk's softmax and other (chunk, V)
intermediates are freed before the next chunk). Peak memory is the logits, their gradient (which
backward needs anyway) and one chunk's intermediates, whatever the sequence length. Value and
gradient equal the unchunked loss (`chunk_tokens=None`, plain autograd on all tokens at once).
The chunked loss is differentiable once (no double backward).

**Sparse teachers**: the teacher may also be a top-k or sampled distribution read from a
teacher-output cache (`kdlab.knowledge.sparse_logits`); the same reduction and chunking apply,
the per-row values come from `sparse_divergences` (k + 1 buckets; the sampled forward KL).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlab.knowledge.sparse_logits import SampledLogits, TopKLogits
from kdlab.methods import sparse_divergences

# A teacher is dense logits, or a sparse distribution from a teacher-output cache.
Teacher = Tensor | TopKLogits | SampledLogits

# (student log-probs (n, V), teacher log-probs (n, V)) -> per-token divergence (n,)
PerToken = Callable[[Tensor, Tensor], Tensor]

# Automatic chunk: at most this many logits per chunk (4 MiB per float32 intermediate; 32
# tokens at V = 32k). Larger chunks save no time, and on CPU the C allocator kept freed 32 MiB
# chunks resident (measured: ~540 MiB more than with 4 MiB chunks at V = 32k, 2048 tokens).
CHUNK_ELEMENTS = 2**20


def kl(log_a: Tensor, log_b: Tensor) -> Tensor:
    """KL(a ‖ b) per row from log-probabilities."""
    return (log_a.exp() * (log_a - log_b)).sum(-1)


def log_mixture(log_a: Tensor, log_b: Tensor, w: float) -> Tensor:
    """log(w·a + (1−w)·b), exact at w = 0 and w = 1."""
    if w == 1.0:
        return log_a
    if w == 0.0:
        return log_b
    return torch.logaddexp(log_a + math.log(w), log_b + math.log1p(-w))


def forward_kl(log_q: Tensor, log_p: Tensor) -> Tensor:
    return kl(log_p, log_q)


def reverse_kl(log_q: Tensor, log_p: Tensor) -> Tensor:
    return kl(log_q, log_p)


def generalized_jsd(log_q: Tensor, log_p: Tensor, beta: float) -> Tensor:
    if beta == 0.0:
        return forward_kl(log_q, log_p)
    if beta == 1.0:
        return reverse_kl(log_q, log_p)
    log_m = log_mixture(log_p, log_q, beta)
    return beta * kl(log_p, log_m) + (1 - beta) * kl(log_q, log_m)


def skew_forward_kl(log_q: Tensor, log_p: Tensor, alpha: float) -> Tensor:
    return kl(log_p, log_mixture(log_p, log_q, alpha))


def skew_reverse_kl(log_q: Tensor, log_p: Tensor, alpha: float) -> Tensor:
    return kl(log_q, log_mixture(log_p, log_q, 1 - alpha))


def total_variation(log_q: Tensor, log_p: Tensor) -> Tensor:
    return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)


def adaptive_kl(log_q: Tensor, log_p: Tensor, mu: float) -> Tensor:
    """AKL (Wu et al. 2024). The head is the fewest top tokens of p whose mass reaches μ: a
    token is in it when the mass of the tokens ranked above it is still below μ (so the top
    token always is). The authors' code instead keeps the top token plus those whose inclusive
    cumulative mass is at most μ, i.e. leaves out the token that crosses μ; kdlab follows the
    paper's definition."""
    with torch.no_grad():
        p_sorted, order = log_p.exp().sort(-1, descending=True)
        gap = (p_sorted - log_q.exp().gather(-1, order)).abs()
        above = F.pad(p_sorted.cumsum(-1)[..., :-1], (1, 0))  # mass ranked above each token
        head = above < mu
        g_head = (gap * head).sum(-1)
        g_tail = (gap * ~head).sum(-1)
        total = (g_head + g_tail).clamp_min(torch.finfo(gap.dtype).tiny)  # p = q: both 0, and so is the loss
        w_head, w_tail = g_head / total, g_tail / total
    return w_head * kl(log_p, log_q) + w_tail * kl(log_q, log_p)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision logits, float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)


def _log_probs(logits: Tensor, tau: float) -> Tensor:
    return F.log_softmax(logits.to(compute_dtype(logits.dtype)) / tau, dim=-1)


def token_values(s: Tensor, t: Teacher, per_token: PerToken, tau: float) -> Tensor:
    """Per-row divergence of student rows s (n, V) from teacher rows t (dense (n, V) logits,
    or a sparse teacher: `sparse_divergences`, temperature 1)."""
    if isinstance(t, Tensor):
        return per_token(_log_probs(s, tau), _log_probs(t, tau))
    return sparse_divergences.token_values(s, t, per_token, compute_dtype(s.dtype))


def _rows(x: Teacher, rows: Tensor, grad: bool) -> Teacher:
    picked = x.index_select(0, rows)
    return picked.requires_grad_(grad) if isinstance(picked, Tensor) else picked


def auto_chunk_tokens(vocab: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(vocab, 1))


class _ChunkedDivergence(torch.autograd.Function):
    """Mean per-token divergence over `rows` of flat (R, V) logits, chunk by chunk; each chunk's
    gradient is taken in forward and written into a (R, V) buffer the size of the logits, which
    backward scales and returns (kept on ctx, not saved: it is no input or output)."""

    @staticmethod
    def forward(ctx, s: Tensor, t: Teacher, rows: Tensor, per_token: PerToken, tau: float, chunk: int):
        need = ctx.needs_input_grad[:2]
        n = len(rows)
        grads = [torch.zeros_like(x) if k else None for x, k in zip((s, t), need)]
        total = torch.zeros((), dtype=compute_dtype(s.dtype), device=s.device)
        device_type = s.device.type
        for i in range(0, n, chunk):
            r = rows[i : i + chunk]
            inputs = [_rows(x, r, k) for x, k in zip((s, t), need)]
            # The divergence runs in float32 (float64 for float64 logits), even under autocast.
            with torch.enable_grad(), torch.autocast(device_type, enabled=False):
                value = token_values(inputs[0], inputs[1], per_token, tau).sum()
            wanted = [x for x, k in zip(inputs, need) if k]
            if wanted and value.requires_grad:  # not so for e.g. skew KL at alpha = 1 (identically 0)
                for g, buf in zip(torch.autograd.grad(value, wanted), [b for b in grads if b is not None]):
                    buf.index_copy_(0, r, (g / n).to(buf.dtype))
            total += value.detach()
        ctx.grads = grads
        return total / n

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        if ctx.grads is None:
            raise RuntimeError("the chunked divergence's backward runs once: retain_graph is not supported")
        # Scaled in place and handed over: a second (R, V) tensor would double the peak.
        grads, ctx.grads = ctx.grads, None
        return (*(None if g is None else g.mul_(grad_out.to(g.dtype)) for g in grads), None, None, None, None)


def divergence_loss(
    student_logits: Tensor,
    teacher_logits: Teacher,
    mask: Tensor,
    per_token: PerToken,
    tau: float = 1.0,
    chunk_tokens: Optional[int] = None,
) -> Tensor:
    """Mean over the unmasked tokens of the per-token divergence between softmax(teacher/τ) and
    softmax(student/τ); logits (..., V), mask (...) True where a token counts.

    chunk_tokens=None computes all unmasked tokens at once with plain autograd (the reference,
    memory ∝ tokens × V × the divergence's intermediates); an integer processes that many
    tokens at a time with bounded memory and the same value and gradient. The teacher may be
    a sparse distribution of the same rows (a top-k or sampled cache, temperature 1)."""
    vocab = student_logits.shape[-1]
    s = student_logits.reshape(-1, vocab)
    t = teacher_logits.reshape(-1, vocab) if isinstance(teacher_logits, Tensor) else teacher_logits.flat()
    rows = mask.reshape(-1).nonzero().squeeze(1)
    if len(rows) == 0:  # nothing to distil: a zero that is still part of the graph
        return s[:0].sum().to(compute_dtype(s.dtype))
    if chunk_tokens is None:
        return token_values(s[rows], t.index_select(0, rows), per_token, tau).mean()
    if not torch.is_grad_enabled():  # the Function would still see needs_input_grad and build gradients
        s, t = s.detach(), (t.detach() if isinstance(t, Tensor) else t)
    return _ChunkedDivergence.apply(s, t, rows, per_token, tau, int(chunk_tokens))
