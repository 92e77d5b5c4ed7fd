"""Small causal Transformer language model (pre-norm `nn.TransformerEncoder` + causal mask)."""

from typing import Optional

import torch
from torch import Tensor, nn

from kdlab.errors import KdlabError
from kdlab.models.lm_base import LanguageModel, check_lm_args
from kdlab.registry import MODELS


class TransformerLM(LanguageModel):
    hint_points = ["encoder"]

    def __init__(self, vocab_size: int, d_model: int, nhead: int, layers: int, ff: int, dropout: float, max_len: int, tie_weights: bool):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Parameter(torch.zeros(max_len, d_model))  # learned positions
        nn.init.normal_(self.embedding.weight, std=0.02)
        nn.init.normal_(self.pos, std=0.02)
        self.drop = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            d_model, nhead, ff, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.max_len = max_len
        self.make_output(vocab_size, d_model, tie_weights)

    def embed(self, x: Tensor) -> Tensor:
        t = x.shape[1]
        if t > self.max_len:
            raise KdlabError(f"transformer_lm: sequences of {t} tokens exceed max_len {self.max_len}; raise max_len")
        h = self.drop(self.embedding(x) + self.pos[:t])
        # Position i attends to positions <= i only.
        mask = torch.triu(torch.full((t, t), float("-inf"), device=x.device), diagonal=1)
        h = self.encoder(h, mask=mask, is_causal=True)
        return self.drop(self.norm(h))


@MODELS.register(
    "transformer_lm",
    "small causal Transformer LM (pre-norm encoder blocks with a causal mask, learned positions); "
    "output embedding tied by default (0.7M params for V=3300, d 128, 2 layers)",
    "Vaswani et al. 2017, arXiv:1706.03762; Radford et al. 2018 (decoder-only LM)",
)
def transformer_lm(
    num_classes: int,
    input_shape: tuple[int, ...],
    vocab_size: Optional[int] = None,
    d_model: int = 128,
    nhead: int = 4,
    layers: int = 2,
    ff: int = 256,
    dropout: float = 0.1,
    max_len: Optional[int] = None,
    tie_weights: bool = True,
) -> nn.Module:
    v = check_lm_args(
        "transformer_lm", vocab_size, input_shape,
        {"d_model": d_model, "nhead": nhead, "layers": layers, "ff": ff, "max_len": max_len or 1}, dropout,
    )
    if d_model % nhead:
        raise KdlabError(f"transformer_lm: d_model {d_model} must be divisible by nhead {nhead}")
    return TransformerLM(v, d_model, nhead, layers, ff, dropout, max_len or int(input_shape[0]), tie_weights)
