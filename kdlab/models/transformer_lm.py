"""Small causal Transformer language model (pre-norm `nn.TransformerEncoder` + causal mask)."""

from typing import Optional

import torch
import torch.nn.functional as F
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

    def positions(self) -> int:
        return self.max_len

    def step(self, x: Tensor, cache=None):
        """The same blocks as `embed`, written out so that each layer's keys and values of the
        tokens seen so far are kept (cache: one (k, v) pair per layer, (B, heads, t, d/heads))
        and each new token attends to them without recomputing them. For decoding in eval
        mode: dropout is left out."""
        past = 0 if cache is None else cache[0][0].shape[2]
        b, t = x.shape
        if past + t > self.max_len:
            raise KdlabError(f"transformer_lm: decoding to {past + t} tokens exceeds max_len {self.max_len}; raise max_len")
        h = self.embedding(x) + self.pos[past : past + t]
        # New token j (position past + j) sees positions 0 .. past + j.
        allowed = torch.ones(t, past + t, dtype=torch.bool, device=x.device).tril(diagonal=past)
        new_cache = []
        for i, layer in enumerate(self.encoder.layers):
            attn = layer.self_attn
            heads = attn.num_heads
            q, k, v = F.linear(layer.norm1(h), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
            q, k, v = (z.view(b, t, heads, -1).transpose(1, 2) for z in (q, k, v))
            if cache is not None:
                k, v = torch.cat([cache[i][0], k], dim=2), torch.cat([cache[i][1], v], dim=2)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
            h = h + attn.out_proj(a.transpose(1, 2).reshape(b, t, -1))
            h = h + layer.linear2(layer.activation(layer.linear1(layer.norm2(h))))
            new_cache.append((k, v))
        return self.classify(self.norm(h)), new_cache

    def reorder_cache(self, cache, index: Tensor):
        return [(k.index_select(0, index), v.index_select(0, index)) for k, v in cache]


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
