"""Relation methods: the student matches relations among samples (SP, CC, RKD, PKT) or among
layers (FSP) rather than the teacher's features themselves, so no projector is needed when the
widths differ."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kdlab.errors import KdlabError
from kdlab.methods.base import register_method
from kdlab.methods.feature_layers import FeatureMethod, LayerParams, as_map, flat


# ------------------------------------------------------------------- Similarity preserving
def sp_loss(fs: Tensor, ft: Tensor) -> Tensor:
    """|| rownorm(Fs Fs^T) - rownorm(Ft Ft^T) ||_F^2 / B^2 on flattened features."""
    b = fs.shape[0]
    fs, ft = flat(fs), flat(ft)
    gs = F.normalize(fs @ fs.t(), dim=1)
    gt = F.normalize(ft @ ft.t(), dim=1)
    return (gs - gt).pow(2).sum() / (b * b)


@register_method(
    "sp",
    "similarity preserving: match the row-normalised batch similarity (Gram) matrix of the last stage",
    "Tung & Mori 2019, arXiv:1907.09682",
)
class SP(FeatureMethod):
    default_layers = "hint:-1"

    class Params(LayerParams):
        pass

    def forward(self, batch, student, teachers):
        return {"sp": sum(sp_loss(s, t) for s, t in self.pairs(student, teachers))}


# ------------------------------------------------------------------ Correlation congruence
def rbf_taylor_correlation(f: Tensor, gamma: float, order: int) -> Tensor:
    """Gaussian-RBF correlation exp(-gamma ||f_i - f_j||^2) of L2-normalised rows through its
    P-order Taylor expansion: exp(-2 gamma) * sum_p (2 gamma f_i.f_j)^p / p!."""
    f = F.normalize(f, dim=1)
    dot = f @ f.t()
    out = torch.zeros_like(dot)
    for p in range(order + 1):
        out = out + (2 * gamma) ** p / math.factorial(p) * dot.pow(p)
    return math.exp(-2 * gamma) * out


@register_method(
    "cc",
    "correlation congruence: match the batch correlation matrix (Gaussian RBF, Taylor-approximated) of the penultimate embedding",
    "Peng et al. 2019, arXiv:1904.01802",
)
class CC(FeatureMethod):
    """L_CC = ||psi(F_t) - psi(F_s)||_F^2 / B^2 with psi the RBF correlation above. The
    correlation is B x B, so embeddings of different widths compare directly; `embed_dim`
    adds a linear embedding of each side first (RepDistiller's variant)."""

    default_layers = "flatten"

    class Params(LayerParams):
        layer_count = 1
        gamma: float = Field(0.4, gt=0)
        order: int = Field(2, ge=0, le=8)
        embed_dim: Optional[int] = Field(None, ge=1)

    def build(self, student, teachers):
        (s, t), = self.pairs(student, teachers)
        d = self.params.embed_dim
        self.embed_s = nn.Linear(flat(s).shape[1], d) if d else nn.Identity()
        self.embed_t = nn.Linear(flat(t).shape[1], d) if d else nn.Identity()

    def forward(self, batch, student, teachers):
        (s, t), = self.pairs(student, teachers)
        p = self.params
        cs = rbf_taylor_correlation(self.embed_s(flat(s)), p.gamma, p.order)
        ct = rbf_taylor_correlation(self.embed_t(flat(t)), p.gamma, p.order)
        b = cs.shape[0]
        return {"cc": (cs - ct).pow(2).sum() / (b * b)}


# ------------------------------------------------------------------ Relational KD
def pairwise_distance(e: Tensor, eps: float = 1e-12) -> Tensor:
    sq = e.pow(2).sum(1)
    d = (sq[:, None] + sq[None, :] - 2 * e @ e.t()).clamp_min(eps).sqrt()
    return d * (1 - torch.eye(len(e), device=e.device, dtype=e.dtype))


def rkd_distance(fs: Tensor, ft: Tensor) -> Tensor:
    """Huber loss between pairwise distances, each normalised by its mean over distinct pairs."""
    ds, dt = pairwise_distance(fs), pairwise_distance(ft)
    ds = ds / ds[ds > 0].mean()
    dt = dt / dt[dt > 0].mean()
    return F.smooth_l1_loss(ds, dt)


def rkd_angle(fs: Tensor, ft: Tensor) -> Tensor:
    """Huber loss between cosines of the angle e_i - e_j, e_k - e_j for every triplet."""

    def cosines(e):
        diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
        return torch.bmm(diff, diff.transpose(1, 2)).reshape(-1)

    return F.smooth_l1_loss(cosines(fs), cosines(ft))


@register_method(
    "rkd",
    "relational KD: Huber match of normalised pairwise distances (w 25) and triplet angles (w 50) of the penultimate embedding",
    "Park et al. 2019, arXiv:1904.05068",
)
class RKD(FeatureMethod):
    default_layers = "flatten"

    class Params(LayerParams):
        layer_count = 1
        distance_weight: float = Field(25.0, ge=0)
        angle_weight: float = Field(50.0, ge=0)

    def forward(self, batch, student, teachers):
        (s, t), = self.pairs(student, teachers)
        s, t = flat(s).float(), flat(t).float()
        p = self.params
        return {
            "rkd_dist": p.distance_weight * rkd_distance(s, t),
            "rkd_angle": p.angle_weight * rkd_angle(s, t),
        }


# --------------------------------------------------------- Probabilistic knowledge transfer
def pkt_loss(fs: Tensor, ft: Tensor, eps: float = 1e-7) -> Tensor:
    """KL between conditional distributions built from cosine similarities mapped to [0, 1]
    and normalised per row: mean_ij q_ij log(q_ij / p_ij) with q the teacher's."""
    fs = flat(fs)
    ft = flat(ft)
    fs = fs / (fs.norm(dim=1, keepdim=True) + eps)
    ft = ft / (ft.norm(dim=1, keepdim=True) + eps)
    ps = (fs @ fs.t() + 1) / 2
    pt = (ft @ ft.t() + 1) / 2
    ps = ps / ps.sum(1, keepdim=True)
    pt = pt / pt.sum(1, keepdim=True)
    return (pt * torch.log((pt + eps) / (ps + eps))).mean()


@register_method(
    "pkt",
    "probabilistic knowledge transfer: KL between cosine-similarity kernel distributions of the penultimate embedding",
    "Passalis & Tefas 2018, arXiv:1803.10837",
)
class PKT(FeatureMethod):
    default_layers = "flatten"

    class Params(LayerParams):
        layer_count = 1

    def forward(self, batch, student, teachers):
        (s, t), = self.pairs(student, teachers)
        return {"pkt": pkt_loss(s.float(), t.float())}


# ------------------------------------------------------------------------ FSP
def fsp_matrix(a: Tensor, b: Tensor) -> Tensor:
    """G = A^T B / (h w) between two maps of one network (the larger pooled to the smaller)."""
    a, b = as_map(a), as_map(b)
    if a.shape[2] * a.shape[3] > b.shape[2] * b.shape[3]:
        a = F.adaptive_avg_pool2d(a, b.shape[2:])
    elif b.shape[2] * b.shape[3] > a.shape[2] * a.shape[3]:
        b = F.adaptive_avg_pool2d(b, a.shape[2:])
    n, hw = a.shape[0], a.shape[2] * a.shape[3]
    return torch.bmm(a.reshape(n, a.shape[1], hw), b.reshape(n, b.shape[1], hw).transpose(1, 2)) / hw


@register_method(
    "fsp",
    "flow of solution procedure: match the Gram (FSP) matrices between consecutive stages' maps",
    "Yim et al. 2017, doi:10.1109/CVPR.2017.754",
)
class FSP(FeatureMethod):
    """Layers are read in order and paired consecutively (stem->stage1, stage1->stage2, ...);
    corresponding student and teacher layers must have equal channels, as in the paper
    (resnet56 -> resnet20). Loss: sum over pairs of the mean squared difference of the FSP
    matrices. RepDistiller uses FSP only to initialise the student before KD."""

    default_layers = "stages"

    class Params(LayerParams):
        min_layers = 2

    def build(self, student, teachers):
        for (s, t), a, b in zip(self.pairs(student, teachers), self.s_layers, self.t_layers):
            if as_map(s).shape[1] != as_map(t).shape[1]:
                raise KdlabError(
                    f"fsp: student layer {a} has {as_map(s).shape[1]} channels but teacher layer {b} has "
                    f"{as_map(t).shape[1]}; FSP needs equal widths: pick layers with student_layers/teacher_layers"
                )

    def forward(self, batch, student, teachers):
        pairs = self.pairs(student, teachers)
        loss = 0.0
        for (s0, t0), (s1, t1) in zip(pairs[:-1], pairs[1:]):
            loss = loss + (fsp_matrix(s0, s1) - fsp_matrix(t0, t1)).pow(2).mean()
        return {"fsp": loss}
