"""Shared parts of the language models: a token embedding, an output layer `fc` whose weight
can be tied to it, and the interface distillation methods read.

A language model maps tokens (B, T) to next-token logits (B, T, V):
`model(x) == model.classify(model.embed(x))`, where `embed` gives the hidden states
(B, T, feat_dim) just below the output layer. `output_embedding` is the (V, feat_dim) matrix
of output word embeddings (`fc.weight`; with tying the same tensor as `embedding.weight`),
which `skd_nlp` reads.
"""

from __future__ import annotations

from typing import Any, Optional

from torch import Tensor, nn

from kdlab.errors import KdlabError


class LanguageModel(nn.Module):
    embedding: nn.Embedding
    fc: nn.Linear
    feat_dim: int
    hint_points: list[str] = []

    def make_output(self, vocab_size: int, feat_dim: int, tie_weights: bool) -> None:
        self.fc = nn.Linear(feat_dim, vocab_size)
        nn.init.zeros_(self.fc.bias)
        if tie_weights:
            self.fc.weight = self.embedding.weight  # one parameter, read and updated by both
        self.feat_dim = int(feat_dim)
        self.tied = bool(tie_weights)

    @property
    def output_embedding(self) -> Tensor:
        return self.fc.weight

    def embed(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def classify(self, h: Tensor) -> Tensor:
        return self.fc(h)

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(self.embed(x))

    # Incremental decoding (kdlab.models.decoding), in eval mode: `step` runs the new tokens
    # x (B, t) after those its cache holds and returns their logits (B, t, V) and the grown
    # cache (None: nothing before); `reorder_cache` keeps cache rows `index` (beam search).
    def step(self, x: Tensor, cache: Any = None) -> tuple[Tensor, Any]:
        raise NotImplementedError

    def reorder_cache(self, cache: Any, index: Tensor) -> Any:
        raise NotImplementedError

    def positions(self) -> Optional[int]:
        """The most tokens one sequence may hold (None: no limit)."""
        return None


def check_lm_args(model: str, vocab_size: Optional[int], input_shape, sizes: dict[str, float], dropout: float) -> int:
    """The vocabulary size from the data, and a clear error for anything unusable."""
    if vocab_size is None:
        raise KdlabError(
            f"model '{model}' is a language model: it needs a text dataset (text, pydoc) that supplies vocab_size"
        )
    if len(input_shape) != 1:
        raise KdlabError(f"model '{model}' takes token sequences of shape (T,); got input_shape {tuple(input_shape)}")
    for k, v in sizes.items():
        if v < 1:
            raise KdlabError(f"{model}: {k} must be >= 1, got {v}")
    if not 0.0 <= dropout < 1.0:
        raise KdlabError(f"{model}: dropout must be in [0, 1), got {dropout}")
    return int(vocab_size)


def output_embedding_of(model: nn.Module) -> Tensor:
    """The (V, d) output word-embedding matrix of a model: `output_embedding`, else `fc.weight`."""
    model = getattr(model, "module", model)
    w = getattr(model, "output_embedding", None)
    if w is None and isinstance(getattr(model, "fc", None), nn.Linear):
        w = model.fc.weight
    if w is None and callable(getattr(model, "get_output_embeddings", None)):  # Hugging Face LMs (lm_head)
        head = model.get_output_embeddings()
        w = getattr(head, "weight", None)
    if not isinstance(w, Tensor) or w.dim() != 2:
        raise KdlabError(
            f"{type(model).__name__} has no output embedding matrix (an `output_embedding` attribute or an "
            "`fc` Linear layer, or a Hugging Face output embedding); use lstm_lm, transformer_lm or an hf causal_lm."
        )
    return w
