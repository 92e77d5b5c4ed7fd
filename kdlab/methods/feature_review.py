"""Knowledge review: each teacher stage is matched by a fusion of the student's same and deeper
stages (attention-based fusion, ABF), with a hierarchical context loss (HCL)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kdlab.methods.base import register_method
from kdlab.methods.feature_layers import FeatureMethod, LayerParams, as_map


class ABF(nn.Module):
    """1x1 conv to `mid` channels; if fusing, mix with the (upsampled) residual from the deeper
    level by two sigmoid attention maps; resize to the teacher's size; 3x3 conv to its channels.
    Returns (output for the loss, residual for the next shallower level)."""

    def __init__(self, cin: int, mid: int, cout: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid))
        self.conv2 = nn.Sequential(nn.Conv2d(mid, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.att = nn.Sequential(nn.Conv2d(2 * mid, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: Tensor, residual: Tensor | None, out_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        x = self.conv1(x)
        if self.att is not None:
            residual = F.interpolate(residual, size=x.shape[2:], mode="nearest")
            z = self.att(torch.cat([x, residual], dim=1))
            x = x * z[:, 0:1] + residual * z[:, 1:2]
        if tuple(x.shape[2:]) != tuple(out_size):
            x = F.interpolate(x, size=out_size, mode="nearest")
        return self.conv2(x), x


def hcl_loss(fs: Tensor, ft: Tensor) -> Tensor:
    """MSE at full resolution plus MSE of 4x4, 2x2, 1x1 average-pooled maps (levels below the
    map's height only) with weights 1/2, 1/4, 1/8, normalised by the weights' sum."""
    h = fs.shape[2]
    loss, weight, total = F.mse_loss(fs, ft), 1.0, 1.0
    for level in (4, 2, 1):
        if level >= h:
            continue
        weight /= 2.0
        loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(fs, level), F.adaptive_avg_pool2d(ft, level))
        total += weight
    return loss / total


@register_method(
    "reviewkd",
    "knowledge review: attention-based fusion of deeper student stages matches each teacher stage, hierarchical context loss",
    "Chen et al. 2021, arXiv:2104.09044",
)
class ReviewKD(FeatureMethod):
    """Layers: every hint point plus the pooled vector (`flatten`, used as a 1x1 map), shallow
    to deep, on both sides; the deepest ABF does not fuse. The loss ramps up linearly over
    `warmup_epochs` (mdistiller: min(epoch/20, 1), epochs counted from 1). mdistiller matches
    the teacher's pre-ReLU maps; zoo hint points are post-ReLU."""

    default_layers = "hints+flatten"

    class Params(LayerParams):
        min_layers = 2
        max_mid_channels: int = Field(512, ge=1)
        warmup_epochs: int = Field(20, ge=0)

    def build(self, student, teachers):
        pairs = [(as_map(s), as_map(t)) for s, t in self.pairs(student, teachers)]
        mid = min(self.params.max_mid_channels, pairs[-1][0].shape[1])
        n = len(pairs)
        # Deepest first: the order in which the review runs.
        self.abfs = nn.ModuleList(
            ABF(s.shape[1], mid, t.shape[1], fuse=i < n - 1) for i, (s, t) in reversed(list(enumerate(pairs)))
        )
        self.out_sizes = [tuple(t.shape[2:]) for _, t in reversed(pairs)]

    def review(self, feats: list[Tensor]) -> list[Tensor]:
        """Student maps (shallow to deep) -> fused outputs (shallow to deep)."""
        outs, residual = [], None
        for abf, x, size in zip(self.abfs, reversed(feats), self.out_sizes):
            y, residual = abf(x, residual, size)
            outs.insert(0, y)
        return outs

    def forward(self, batch, student, teachers):
        pairs = [(as_map(s), as_map(t)) for s, t in self.pairs(student, teachers)]
        outs = self.review([s for s, _ in pairs])
        loss = sum(hcl_loss(o, t) for o, (_, t) in zip(outs, pairs))
        w = self.params.warmup_epochs
        ramp = min((self.epoch + 1) / w, 1.0) if w > 0 else 1.0
        return {"reviewkd": ramp * loss}
