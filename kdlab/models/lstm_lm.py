"""LSTM language model: embedding -> dropout -> LSTM -> (projection) -> dropout -> fc."""

from typing import Optional

from torch import Tensor, nn

from kdlab.models.lm_base import LanguageModel, check_lm_args
from kdlab.registry import MODELS


class LSTMLM(LanguageModel):
    hint_points = ["rnn"]

    def __init__(self, vocab_size: int, emb_dim: int, hidden: int, layers: int, dropout: float, tie_weights: bool):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, emb_dim)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        self.drop = nn.Dropout(dropout)
        self.rnn = nn.LSTM(emb_dim, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        # Tying needs the hidden state in the embedding's width.
        self.proj = nn.Linear(hidden, emb_dim) if tie_weights and hidden != emb_dim else nn.Identity()
        out_dim = emb_dim if tie_weights else hidden
        self.make_output(vocab_size, out_dim, tie_weights)

    def embed(self, x: Tensor) -> Tensor:
        h, _ = self.rnn(self.drop(self.embedding(x)))
        return self.drop(self.proj(h))

    def step(self, x: Tensor, cache=None):
        """The LSTM's (h, c) state is the cache."""
        h, state = self.rnn(self.drop(self.embedding(x)), cache)
        return self.classify(self.drop(self.proj(h))), state

    def reorder_cache(self, cache, index: Tensor):
        return tuple(s.index_select(1, index) for s in cache)  # (layers, B, hidden)


@MODELS.register(
    "lstm_lm",
    "LSTM language model (tokens (B,T) -> logits (B,T,V)); output embedding tied to the input "
    "embedding by default (0.56M params for V=3300, emb 128, hidden 128, 1 layer)",
    "Zaremba et al. 2014, arXiv:1409.2329; tying: Press & Wolf 2017, arXiv:1608.05859",
)
def lstm_lm(
    num_classes: int,
    input_shape: tuple[int, ...],
    vocab_size: Optional[int] = None,
    emb_dim: int = 128,
    hidden: int = 128,
    layers: int = 1,
    dropout: float = 0.2,
    tie_weights: bool = True,
) -> nn.Module:
    v = check_lm_args("lstm_lm", vocab_size, input_shape, {"emb_dim": emb_dim, "hidden": hidden, "layers": layers}, dropout)
    return LSTMLM(v, emb_dim, hidden, layers, dropout, tie_weights)
