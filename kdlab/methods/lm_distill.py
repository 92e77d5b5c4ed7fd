"""Token-level distillation of language models: one registered method per divergence, all on
(batch, time, vocabulary) logits, computed by `token_divergences.divergence_loss` (formulas,
the shared reduction and the bounded-memory chunking are documented there and in docs/llm.md).

Which tokens count: a position is distilled unless its label `y` is -100 (the Hugging Face
ignore index; prompt positions are usually labelled so), or the batch carries an
`attention_mask` (padding, 0 = pad) or a `loss_mask` (0 = do not distil, e.g. prompt tokens)
that is 0 there. Reduction: sum over the vocabulary, mean over the counted tokens of the batch;
no τ² factor.
"""

from __future__ import annotations

from functools import partial
from typing import ClassVar, Optional

import torch
from pydantic import Field
from torch import Tensor

from kdlab.data.batching import IGNORE_INDEX
from kdlab.errors import KdlabError
from kdlab.knowledge.sparse_logits import SPARSE, SampledLogits
from kdlab.methods import token_divergences as td
from kdlab.methods.base import Method, MethodParams, one_teacher, register_method

MASK_KEYS = ("attention_mask", "loss_mask")


def token_mask(batch: dict[str, Tensor], logits: Tensor) -> Tensor:
    """Bool (...) mask of the positions of logits (..., V) that are distilled."""
    shape = logits.shape[:-1]
    mask = torch.ones(shape, dtype=torch.bool, device=logits.device)
    y = batch.get("y")
    if y is not None:
        if y.shape != shape:
            raise KdlabError(f"labels have shape {tuple(y.shape)} but the logits {tuple(logits.shape)}: "
                             "token-level divergences need one label per logit position")
        mask &= y != IGNORE_INDEX
    for key in MASK_KEYS:
        if key in batch:
            m = batch[key]
            if m.shape != shape:
                raise KdlabError(f"batch '{key}' has shape {tuple(m.shape)} but the logits {tuple(logits.shape)}: "
                                 f"it needs one entry per token position")
            mask &= m.bool()
    return mask


class TokenDivergenceParams(MethodParams):
    tau: float = Field(1.0, gt=0)  # temperature on both logits (no τ² factor on the loss)
    # Tokens per chunk; null: as many as keep a chunk within 2^20 logits (32 at V = 32k).
    chunk_tokens: Optional[int] = Field(None, ge=1)


class SkewParams(TokenDivergenceParams):
    alpha: float = Field(0.1, ge=0, le=1)  # weight, in the mixture, of the KL's first argument; DistiLLM: 0.1


class TokenDivergence(Method):
    """Base of the token-level divergences: subclasses name their per-token function."""

    Params: ClassVar[type[MethodParams]] = TokenDivergenceParams

    def per_token(self) -> td.PerToken:
        raise NotImplementedError

    def forward(self, batch, student, teachers):
        p = self.params
        s, t_out = student.logits, one_teacher(teachers, self.name)
        t = self._sparse(t_out.extras[SPARSE], s) if SPARSE in t_out.extras else t_out.logits
        if isinstance(t, Tensor) and s.shape != t.shape:
            raise KdlabError(f"{self.name}: student logits {tuple(s.shape)} and teacher logits {tuple(t.shape)} differ; "
                             "token-level divergences need the same tokens and vocabulary (one tokenizer)")
        chunk = p.chunk_tokens or td.auto_chunk_tokens(s.shape[-1])
        loss = td.divergence_loss(s, t, token_mask(batch, s), self.per_token(), p.tau, chunk)
        return {self.name: loss}

    def _sparse(self, t, s: Tensor):
        """A teacher from a top-k or sampled cache (`sparse_divergences`), checked against
        the student's logits and this method's settings."""
        if tuple(t.shape) != tuple(s.shape[:-1]):
            raise KdlabError(f"{self.name}: the cached teacher has {tuple(t.shape)} token positions but the student's "
                             f"logits {tuple(s.shape[:-1])}: rebuild the cache for this data")
        if self.params.tau != 1:
            raise KdlabError(f"{self.name}: a top-k or sampled teacher cache holds the teacher at temperature 1 (its tail "
                             f"at tau {self.params.tau:g} is unknown): set tau: 1, or cache with topk equal to the vocabulary")
        if isinstance(t, SampledLogits) and not isinstance(self, ForwardKL):
            raise KdlabError(f"{self.name}: a sampled teacher cache gives an unbiased estimate of the forward KL only: "
                             "use fkl, or a topk cache for other divergences")
        return t


@register_method("fkl", "token-level forward KL(p‖q) on LM logits, mean over unmasked tokens (mode-covering)",
                 "Hinton et al. 2015; Kim & Rush 2016, arXiv:1606.07947")
class ForwardKL(TokenDivergence):
    def per_token(self):
        return td.forward_kl


@register_method("rkl", "token-level reverse KL(q‖p) on LM logits (mode-seeking)",
                 "MiniLLM, Gu et al. 2024, arXiv:2306.08543")
class ReverseKL(TokenDivergence):
    def per_token(self):
        return td.reverse_kl


@register_method("jsd", "generalised Jensen-Shannon JSD(β) on LM logits; β=0 forward KL, β=1 reverse KL",
                 "GKD, Agarwal et al. 2024, arXiv:2306.13649")
class GeneralizedJSD(TokenDivergence):
    class Params(TokenDivergenceParams):
        beta: float = Field(0.5, ge=0, le=1)  # mixture m = β·p + (1−β)·q

    def per_token(self):
        return partial(td.generalized_jsd, beta=self.params.beta)


@register_method("skew_fkl", "skew forward KL(p ‖ α·p + (1−α)·q) on LM logits; α=0 is forward KL",
                 "DistiLLM, Ko et al. 2024, arXiv:2402.03898")
class SkewForwardKL(TokenDivergence):
    Params = SkewParams

    def per_token(self):
        return partial(td.skew_forward_kl, alpha=self.params.alpha)


@register_method("skew_rkl", "skew reverse KL(q ‖ (1−α)·p + α·q) on LM logits; α=0 is reverse KL",
                 "DistiLLM, Ko et al. 2024, arXiv:2402.03898")
class SkewReverseKL(TokenDivergence):
    Params = SkewParams

    def per_token(self):
        return partial(td.skew_reverse_kl, alpha=self.params.alpha)


@register_method("tvd", "total variation distance ½Σ|p−q| on LM logits",
                 "compared in DistiLLM (Ko et al. 2024) and DistillKit")
class TotalVariation(TokenDivergence):
    def per_token(self):
        return td.total_variation


@register_method("akl", "adaptive KL: forward and reverse KL weighted by the head/tail gaps of p (μ: head mass)",
                 "Wu et al. 2024, arXiv:2404.02657")
class AdaptiveKL(TokenDivergence):
    class Params(TokenDivergenceParams):
        mu: float = Field(0.5, gt=0, le=1)  # the head: fewest top teacher tokens whose mass reaches μ

    def per_token(self):
        return partial(td.adaptive_kl, mu=self.params.mu)
