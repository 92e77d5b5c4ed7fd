"""Variational information distillation: maximise a variational lower bound on the mutual
information between teacher and student maps with a Gaussian q(t | s)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kdlab.methods.base import register_method
from kdlab.methods.feature_layers import FeatureMethod, LayerParams, pool_to_smaller


def vid_nll(mean: Tensor, target: Tensor, log_scale: Tensor, eps: float) -> Tensor:
    """Gaussian negative log-likelihood per element (constant dropped), averaged:
    0.5 * ((t - mu)^2 / var + log var), var = softplus(log_scale) + eps per channel."""
    var = (F.softplus(log_scale) + eps).reshape(1, -1, 1, 1)
    return 0.5 * ((mean - target).pow(2) / var + torch.log(var)).mean()


class VIDHead(nn.Module):
    """mu(s): three 1x1 convs with ReLUs (student -> mid -> mid -> teacher channels), and a
    learned per-channel variance initialised at `init_var`."""

    def __init__(self, cs: int, mid: int, ct: int, init_var: float, eps: float):
        super().__init__()
        self.mean = nn.Sequential(
            nn.Conv2d(cs, mid, 1, bias=False), nn.ReLU(), nn.Conv2d(mid, mid, 1, bias=False), nn.ReLU(),
            nn.Conv2d(mid, ct, 1, bias=False),
        )
        # softplus^-1(init_var - eps), so the variance starts at init_var.
        self.log_scale = nn.Parameter(torch.full((ct,), math.log(math.expm1(init_var - eps))))


@register_method(
    "vid",
    "variational information distillation: Gaussian likelihood of the teacher's maps under a regressor of the student's, learned per-channel variance",
    "Ahn et al. 2019, arXiv:1904.05835",
)
class VID(FeatureMethod):
    default_layers = "all_hints"

    class Params(LayerParams):
        init_var: float = Field(5.0, gt=0)
        eps: float = Field(1e-5, gt=0)

    def build(self, student, teachers):
        heads = []
        for s, t in self.pairs(student, teachers):
            s, t = pool_to_smaller(s, t)
            ct = t.shape[1]  # RepDistiller: the middle width is the teacher's
            heads.append(VIDHead(s.shape[1], ct, ct, self.params.init_var, self.params.eps))
        self.heads = nn.ModuleList(heads)

    def forward(self, batch, student, teachers):
        loss = 0.0
        for h, (s, t) in zip(self.heads, self.pairs(student, teachers)):
            s, t = pool_to_smaller(s, t)
            loss = loss + vid_nll(h.mean(s), t, h.log_scale, self.params.eps)
        return {"vid": loss}
