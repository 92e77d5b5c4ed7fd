"""Feature-map methods: the student's maps are matched to the teacher's, point by point or
through a statistic of them (FitNets, AT, AB, FT, NST, OFD).

Zoo features are post-ReLU stage outputs (forward hooks on unmodified models). AB and OFD were
defined on pre-ReLU features; see each class for how that is handled.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kdlab.knowledge.taps import resolve_layer
from kdlab.methods.base import MethodContext, register_method
from kdlab.methods.feature_layers import (
    Connector,
    ConvRegressor,
    FeatureMethod,
    LayerParams,
    as_map,
    flat,
    pool_to_smaller,
    resize,
    spatial,
)


# ------------------------------------------------------------------------------ FitNets
@register_method(
    "fitnet",
    "FitNets hint: MSE between a conv regressor of the student's middle-stage map and the teacher's",
    "Romero et al. 2015, arXiv:1412.6550",
)
class FitNet(FeatureMethod):
    default_layers = "hint:1"

    class Params(LayerParams):
        pass

    def build(self, student, teachers):
        self.regressors = nn.ModuleList(
            ConvRegressor(as_map(s).shape, as_map(t).shape) for s, t in self.pairs(student, teachers)
        )

    def forward(self, batch, student, teachers):
        loss = sum(F.mse_loss(r(s), as_map(t)) for r, (s, t) in zip(self.regressors, self.pairs(student, teachers)))
        return {"fitnet": loss}


# ---------------------------------------------------------------------------- Attention
def attention_map(f: Tensor, p: float) -> Tensor:
    """Spatial attention: channel mean of |f|^p, flattened and L2-normalised per sample."""
    return F.normalize(flat(as_map(f).abs().pow(p).mean(1)), dim=1)


def at_loss(fs: Tensor, ft: Tensor, p: float) -> Tensor:
    fs, ft = pool_to_smaller(fs, ft)
    return (attention_map(fs, p) - attention_map(ft, p)).pow(2).mean()


@register_method(
    "at",
    "attention transfer: match L2-normalised spatial attention maps (sum of |A|^p) at every stage",
    "Zagoruyko & Komodakis 2017, arXiv:1612.03928",
)
class AT(FeatureMethod):
    default_layers = "all_hints"

    class Params(LayerParams):
        p: float = Field(2.0, gt=0)

    def forward(self, batch, student, teachers):
        return {"at": sum(at_loss(s, t, self.params.p) for s, t in self.pairs(student, teachers))}


# ---------------------------------------------------------------- Activation boundaries
def ab_loss(source: Tensor, target: Tensor, margin: float) -> Tensor:
    """Hinge-squared on the teacher's activation pattern: where the teacher's neuron is active
    (t > 0) push the student's pre-activation above +margin, elsewhere below -margin; summed."""
    on = (target > 0).float()
    loss = (source + margin).pow(2) * ((source > -margin).float() * (1 - on)) + (source - margin).pow(2) * (
        (source <= margin).float() * on
    )
    return loss.sum()


@register_method(
    "ab",
    "activation boundaries: connector(student) must reproduce the teacher's on/off neuron pattern with a margin",
    "Heo et al. 2019, arXiv:1811.03233",
)
class AB(FeatureMethod):
    """Only the sign of the teacher's pre-activation matters, and a post-ReLU value is > 0
    exactly where the pre-activation is, so the teacher side is exact on zoo features. The
    student side goes through a 1x1 conv-BN connector (any sign), as in the paper. Deeper pairs
    weigh more (2^(i-n+1)), and the sum is divided by the batch and scaled by 3/1000, following
    RepDistiller. RepDistiller uses AB only to initialise the student (30 epochs) before KD."""

    default_layers = "all_hints"

    class Params(LayerParams):
        margin: float = Field(1.0, ge=0)

    def build(self, student, teachers):
        self.connectors = nn.ModuleList(
            Connector(as_map(s).shape[1], as_map(t).shape[1], spatial(t)) for s, t in self.pairs(student, teachers)
        )

    def forward(self, batch, student, teachers):
        pairs = self.pairs(student, teachers)
        n, b = len(pairs), pairs[0][0].shape[0]
        loss = 0.0
        for i, (c, (s, t)) in enumerate(zip(self.connectors, pairs)):
            loss = loss + 2.0 ** (i - n + 1) * ab_loss(c(s), as_map(t), self.params.margin)
        return {"ab": loss / b * 3 / 1000}


# -------------------------------------------------------------------------- Factor transfer
def _conv_bn_lrelu(cin: int, cout: int, transpose: bool = False) -> list[nn.Module]:
    conv = nn.ConvTranspose2d(cin, cout, 3, 1, 1) if transpose else nn.Conv2d(cin, cout, 3, 1, 1)
    return [conv, nn.BatchNorm2d(cout), nn.LeakyReLU(0.1)]


class Paraphraser(nn.Module):
    """Autoencoder on the teacher's map; its encoder output is the teacher factor."""

    def __init__(self, c: int, k: int):
        super().__init__()
        self.encoder = nn.Sequential(*_conv_bn_lrelu(c, c), *_conv_bn_lrelu(c, k), *_conv_bn_lrelu(k, k))
        self.decoder = nn.Sequential(
            *_conv_bn_lrelu(k, k, True), *_conv_bn_lrelu(k, c, True), *_conv_bn_lrelu(c, c, True)
        )


def factor_loss(fs: Tensor, ft: Tensor, p: int) -> Tensor:
    """|| F_s/||F_s|| - F_t/||F_t|| ||_p^p averaged over elements (RepDistiller's FT loss)."""
    return (F.normalize(flat(fs), dim=1) - F.normalize(flat(ft), dim=1)).abs().pow(p).mean()


@register_method(
    "ft",
    "factor transfer: a translator maps the student's last map onto the factor of a paraphraser (autoencoder) of the teacher's",
    "Kim et al. 2018, arXiv:1802.04977",
)
class FT(FeatureMethod):
    """The paper pre-trains the paraphraser on the teacher's map, then freezes it. Here it is
    trained in the same run by its reconstruction loss (`ft_rec`, gradients into the
    paraphraser only) while the factor loss uses the detached factor, so one config runs it;
    the first epochs therefore chase a moving factor."""

    default_layers = "hint:-1"

    class Params(LayerParams):
        layer_count = 1
        rate: float = Field(0.5, gt=0, le=4)  # factor channels = rate * teacher channels
        p: int = Field(1, ge=1, le=2)
        rec_weight: float = Field(1.0, ge=0)

    def build(self, student, teachers):
        (s, t), = self.pairs(student, teachers)
        sc, tc = as_map(s).shape[1], as_map(t).shape[1]
        k = max(1, int(round(tc * self.params.rate)))
        self.paraphraser = Paraphraser(tc, k)
        self.translator = nn.Sequential(*_conv_bn_lrelu(sc, sc), *_conv_bn_lrelu(sc, k), *_conv_bn_lrelu(k, k))

    def forward(self, batch, student, teachers):
        (s, t), = self.pairs(student, teachers)
        t = as_map(t).detach()
        factor_t = self.paraphraser.encoder(t)
        rec = F.mse_loss(self.paraphraser.decoder(factor_t), t)
        factor_s = resize(self.translator(as_map(s)), factor_t.shape[2:])
        return {"ft": factor_loss(factor_s, factor_t.detach(), self.params.p), "ft_rec": self.params.rec_weight * rec}


# ---------------------------------------------------------------------- Neuron selectivity
def poly_kernel(a: Tensor, b: Tensor) -> Tensor:
    """(a_i . b_j)^2 for every pair of channels i, j of each sample: (B, Cb, Ca)."""
    return torch.bmm(b, a.transpose(1, 2)).pow(2)


def nst_loss(fs: Tensor, ft: Tensor) -> Tensor:
    """Squared MMD with a degree-2 polynomial kernel between the sets of channel activation
    patterns (each channel's spatial map, L2-normalised, is one sample)."""
    fs, ft = pool_to_smaller(fs, ft)
    fs = F.normalize(fs.reshape(fs.shape[0], fs.shape[1], -1), dim=2)
    ft = F.normalize(ft.reshape(ft.shape[0], ft.shape[1], -1), dim=2)
    return poly_kernel(ft, ft).mean() + poly_kernel(fs, fs).mean() - 2 * poly_kernel(fs, ft).mean()


@register_method(
    "nst",
    "neuron selectivity transfer: polynomial-kernel MMD between student and teacher channel activation patterns",
    "Huang & Wang 2017, arXiv:1707.01219",
)
class NST(FeatureMethod):
    default_layers = "all_hints"

    class Params(LayerParams):
        pass

    def forward(self, batch, student, teachers):
        return {"nst": sum(nst_loss(s, t) for s, t in self.pairs(student, teachers))}


# ------------------------------------------------------------------- Overhaul of distillation
def gaussian_negative_mean(mean: Tensor, std: Tensor) -> Tensor:
    """E[x | x < 0] for x ~ N(mean, std^2), per channel: the OFD margin. Where almost no mass
    lies below zero (P < 0.001) the paper uses -3 std."""
    std = std.abs().clamp_min(1e-8)
    z = mean / std
    cdf = 0.5 * torch.erfc(z / math.sqrt(2))  # P(x < 0) = Phi(-z)
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    margin = mean - std * pdf / cdf.clamp_min(1e-12)
    return torch.where(cdf > 1e-3, margin, -3 * std)


def ofd_partial_l2(source: Tensor, target: Tensor, margin: Tensor) -> Tensor:
    """Squared error, skipped where both are 'off': teacher below zero (target clipped at the
    margin) and the student already below it."""
    target = torch.max(target, margin)
    mask = ((source > target) | (target > 0)).float()
    return ((source - target).pow(2) * mask).sum()


def _last_bn(module: nn.Module) -> Optional[nn.BatchNorm2d]:
    found = None
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            found = m
    return found


@register_method(
    "ofd",
    "overhaul of feature distillation: margin-ReLU teacher target, 1x1 connector, partial L2 that skips agreeing negatives",
    "Heo et al. 2019, arXiv:1904.01866",
)
class OFD(FeatureMethod):
    """The paper distils pre-ReLU maps, with a per-channel margin E[x | x < 0] taken from the
    BN before the teacher's ReLU. Zoo hint points are post-ReLU, so here: the margin comes from
    the last BatchNorm inside the teacher's tapped module (for a CIFAR ResNet stage, the last
    block's bn2, as in the official code; the residual sum is ignored there too), and where the
    post-ReLU teacher value is 0 the target is that margin, i.e. max(t_pre, m) with every
    negative t_pre replaced by m. Without a BN the margin is 0. Pairs weigh 2^(i-n+1); the sum
    is divided by the batch and multiplied by `scale` (1e-3, the official CIFAR setting)."""

    default_layers = "all_hints"

    class Params(LayerParams):
        scale: float = Field(1e-3, gt=0)

    def __init__(self, params, ctx: MethodContext):
        super().__init__(params, ctx)
        teacher = ctx.teachers[0] if ctx.teachers and isinstance(ctx.teachers[0], nn.Module) else None
        self._bn_margins: list[Optional[Tensor]] = []
        for layer in self.t_layers:
            bn = None
            if teacher is not None:
                base = getattr(teacher, "module", teacher)
                bn = _last_bn(base.get_submodule(resolve_layer(base, layer, "teacher")))
            self._bn_margins.append(
                gaussian_negative_mean(bn.bias.detach().float(), bn.weight.detach().float()) if bn is not None else None
            )

    def build(self, student, teachers):
        pairs = self.pairs(student, teachers)
        self.connectors = nn.ModuleList(Connector(as_map(s).shape[1], as_map(t).shape[1], spatial(t)) for s, t in pairs)
        for i, (m, (_, t)) in enumerate(zip(self._bn_margins, pairs)):
            c = as_map(t).shape[1]
            if m is None or m.numel() != c:
                m = torch.zeros(c)
            self.register_buffer(f"margin{i}", m.reshape(1, c, 1, 1).clone())

    def forward(self, batch, student, teachers):
        pairs = self.pairs(student, teachers)
        n, b = len(pairs), pairs[0][0].shape[0]
        loss = 0.0
        for i, (c, (s, t)) in enumerate(zip(self.connectors, pairs)):
            t = as_map(t)
            margin = getattr(self, f"margin{i}").to(t.dtype)
            # Post-ReLU zero = the teacher's pre-activation was negative: target the margin.
            target = torch.where(t > 0, t, margin.expand_as(t))
            loss = loss + ofd_partial_l2(c(s), target, margin) / 2 ** (n - i - 1)
        return {"ofd": loss / b * self.params.scale}
