"""A teacher's output distributions kept sparsely, as a teacher-output cache stores them.

- `TopKLogits`: per row the k largest logits (`values`, at temperature 1), their token
  `indices`, and `rest` = log Σ_{v ∉ top k} exp(t_v), so the teacher's mass outside the top k,
  1 − Σ_top-k p, is known exactly.
- `SampledLogits`: per row k token `ids` drawn with replacement from p = softmax(t) and the
  teacher's `entropy` H(p), enough for an unbiased estimate of KL(p ‖ q) and of its gradient
  (Anshumann et al. 2025, "Sparse Logit Sampling", arXiv:2503.16870).

How the divergences use them: `kdlab.methods.sparse_divergences`. Methods that read dense
logits get them from `SparseTeacherOutputs.logits`, built on first use (top-k: the stored
probabilities, the rest mass spread evenly over the other tokens; a sampled cache has none).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from kdlab.errors import KdlabError
from kdlab.knowledge.outputs import Outputs

SPARSE = "sparse_logits"  # the Outputs.extras key of a sparse teacher distribution


def topk_fields(logits: Tensor, k: int) -> dict[str, Tensor]:
    """The k largest logits of each row (values, indices) and the log of the summed exp of
    the others (`rest`): enough to restore the softmax's top-k probabilities and the mass
    left to the rest."""
    values, indices = logits.float().topk(k, dim=-1)
    rest = logits.float().scatter(-1, indices, float("-inf")).logsumexp(-1)
    return {"values": values, "indices": indices.int(), "rest": rest}


def sample_fields(logits: Tensor, k: int, generator: torch.Generator) -> dict[str, Tensor]:
    """k token ids per row drawn with replacement from softmax(logits) (sorted, so equal draws
    sit together), and the distribution's entropy."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    flat = logp.reshape(-1, logp.shape[-1]).exp()
    ids = torch.multinomial(flat, k, replacement=True, generator=generator).sort(-1).values
    entropy = -(logp.exp() * logp).nan_to_num(0.0).sum(-1)  # 0·log 0 = 0
    return {"ids": ids.reshape(*logp.shape[:-1], k).int(), "entropy": entropy}


def from_topk(values: Tensor, indices: Tensor, rest: Tensor, width: int) -> Tensor:
    """Logits whose softmax (temperature 1) has the stored top-k probabilities and spreads
    the remaining mass evenly over the other classes (with k = width: the logits themselves)."""
    others = width - values.shape[-1]
    fill = rest - math.log(others) if others else rest
    out = fill.unsqueeze(-1).expand(*values.shape[:-1], width).clone()
    return out.scatter(-1, indices.long(), values)


@dataclass
class TopKLogits:
    values: Tensor  # (..., k) float
    indices: Tensor  # (..., k) int
    rest: Tensor  # (...) float

    @property
    def shape(self) -> torch.Size:
        """The rows' shape (the logits' shape without the vocabulary)."""
        return self.rest.shape

    def flat(self) -> "TopKLogits":
        k = self.values.shape[-1]
        return TopKLogits(self.values.reshape(-1, k), self.indices.reshape(-1, k), self.rest.reshape(-1))

    def index_select(self, dim: int, rows: Tensor) -> "TopKLogits":
        return TopKLogits(*(t.index_select(dim, rows) for t in (self.values, self.indices, self.rest)))

    def dense(self, width: int) -> Tensor:
        return from_topk(self.values, self.indices, self.rest, width)


@dataclass
class SampledLogits:
    ids: Tensor  # (..., k) int, drawn from p with replacement
    entropy: Tensor  # (...) float, H(p)

    @property
    def shape(self) -> torch.Size:
        return self.entropy.shape

    def flat(self) -> "SampledLogits":
        return SampledLogits(self.ids.reshape(-1, self.ids.shape[-1]), self.entropy.reshape(-1))

    def index_select(self, dim: int, rows: Tensor) -> "SampledLogits":
        return SampledLogits(self.ids.index_select(dim, rows), self.entropy.index_select(dim, rows))

    def dense(self, width: int) -> Tensor:
        raise KdlabError("a sampled teacher cache holds draws from the teacher, not its logits: only `fkl` reads it "
                         "(an unbiased estimate); use teacher.cache.topk for other methods")


class SparseTeacherOutputs(Outputs):
    """Outputs of a teacher answered from a sparse cache: `extras[SPARSE]` holds the sparse
    distribution; `.logits` is made dense only if a method reads it (a (B, T, V) tensor that
    the token-level divergences never need)."""

    def __init__(self, sparse: TopKLogits | SampledLogits, width: int, features: Optional[dict] = None):
        self._dense: Optional[Tensor] = None
        self.width = width
        super().__init__(logits=None, features=features or {}, extras={SPARSE: sparse})

    @property
    def logits(self) -> Tensor:  # type: ignore[override]
        if self._dense is None:
            self._dense = self.extras[SPARSE].dense(self.width)
        return self._dense

    @logits.setter
    def logits(self, value: Optional[Tensor]) -> None:
        self._dense = value
