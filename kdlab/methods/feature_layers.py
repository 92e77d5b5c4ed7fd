"""Shared parts of the feature and relation methods: which layers they read, and the small
shape adapters (pooling, 1x1 connectors, FitNets' regressor) their papers use.

Layer convention. Every feature method has `student_layers` / `teacher_layers` params: module
paths (`layer3.1`) or `hint:i` (the model's i-th standard hint point). Left out, each method
uses its paper's default, spelled in terms of the zoo's hint points:

- `all_hints`: every hint point, paired from the deep end when the two models have a different
  number of them (AT, NST, VID, AB, OFD);
- `hint:1`: the middle stage (FitNets, as RepDistiller's hint layer 2 = the second body stage);
- `hint:-1`: the last stage's map (SP, FT);
- `flatten`: the penultimate embedding. Every zoo model runs `neck -> pool -> flatten -> fc`;
  the output of its `flatten` module is the pooled vector that feeds `fc` (RepDistiller's
  `feat[-1]`), so RKD, PKT, CC and CRD tap it instead of pooling a map themselves;
- `stages`: the stem and every body stage (FSP, which needs each stage's input and output);
- `hints+flatten`: every hint point, then the pooled vector (ReviewKD).

Paths are checked against the real models when the method is made (before any student
training), so a typo fails with the close paths listed.
"""

from __future__ import annotations

import re
from typing import ClassVar, Optional

import torch
import torch.nn.functional as F
from pydantic import field_validator, model_validator
from torch import Tensor, nn

from kdlab.errors import KdlabError
from kdlab.knowledge.taps import resolve_layer
from kdlab.methods.base import Method, MethodContext, MethodParams, Needs, one_teacher

_LAYER = re.compile(r"^(hint:-?\d+|[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*)$")


class LayerParams(MethodParams):
    """Layer choice shared by the feature methods; `layer_count` fixes how many a method reads."""

    layer_count: ClassVar[Optional[int]] = None  # None: any number of pairs
    min_layers: ClassVar[int] = 1

    student_layers: Optional[list[str]] = None
    teacher_layers: Optional[list[str]] = None

    @field_validator("student_layers", "teacher_layers")
    @classmethod
    def _format(cls, v):
        if v is None:
            return v
        if not v:
            raise ValueError("name at least one layer, or leave the key out for the method's default")
        for layer in v:
            if not isinstance(layer, str) or not _LAYER.match(layer):
                raise ValueError(f"'{layer}' is not a module path (e.g. layer3.1) or hint:i")
        return v

    @model_validator(mode="after")
    def _counts(self):
        s, t = self.student_layers, self.teacher_layers
        if s is not None and t is not None and len(s) != len(t):
            raise ValueError(f"student_layers has {len(s)} layers but teacher_layers has {len(t)}: they are paired")
        for v in (s, t):
            if v is None:
                continue
            if self.layer_count is not None and len(v) != self.layer_count:
                raise ValueError(f"this method reads exactly {self.layer_count} layer(s), got {len(v)}")
            if len(v) < self.min_layers:
                raise ValueError(f"this method needs at least {self.min_layers} layers, got {len(v)}")
        return self


def _default_layers(model: Optional[nn.Module], policy: str, role: str) -> list[str]:
    model = getattr(model, "module", model)
    if policy in ("hint:1", "hint:-1", "flatten"):
        return [policy]
    if model is None:
        raise KdlabError(f"the {role} layers must be named: there is no {role} model to take its defaults from")
    hints = list(getattr(model, "hint_points", []))
    if policy == "all_hints":
        return [f"hint:{i}" for i in range(len(hints))]
    if policy == "hints+flatten":
        return [f"hint:{i}" for i in range(len(hints))] + ["flatten"]
    if policy == "stages":
        stages = list(getattr(model, "stage_names", []))
        if not stages:
            raise KdlabError(f"the {role} model has no stage_names: name its layers with student_layers/teacher_layers")
        return stages
    raise ValueError(f"unknown layer policy {policy}")


class FeatureMethod(Method):
    """A method that reads paired student/teacher layers. Subclasses set `default_layers`."""

    default_layers: ClassVar[str] = "all_hints"

    def __init__(self, params: LayerParams, ctx: MethodContext):
        super().__init__(params, ctx)
        student = ctx.student if isinstance(ctx.student, nn.Module) else None
        teacher = ctx.teachers[0] if ctx.teachers and isinstance(ctx.teachers[0], nn.Module) else None
        s = params.student_layers or _default_layers(student, self.default_layers, "student")
        t = params.teacher_layers or _default_layers(teacher, self.default_layers, "teacher")
        if len(s) != len(t):  # defaults of models with different depths: pair from the deep end
            if params.student_layers is not None or params.teacher_layers is not None:
                raise KdlabError(
                    f"{self.name}: {len(s)} student layer(s) but {len(t)} teacher layer(s); name both lists, of equal length"
                )
            n = min(len(s), len(t))
            if self.default_layers == "hints+flatten":
                s = s[len(s) - n : -1] + s[-1:]  # the deepest n-1 hints, then `flatten`
                t = t[len(t) - n : -1] + t[-1:]
            else:
                s, t = s[-n:], t[-n:]
        count, least = type(params).layer_count, type(params).min_layers
        for layers in (s, t):
            if count is not None and len(layers) != count or len(layers) < least:
                raise KdlabError(f"{self.name}: needs {count or f'at least {least}'} layer(s), got {layers}")
        # Check every path now, before the student trains: a typo names the close paths.
        if student is not None:
            for layer in s:
                resolve_layer(student, layer, "student")
        if teacher is not None:
            for layer in t:
                resolve_layer(teacher, layer, "teacher")
        self.s_layers, self.t_layers = list(s), list(t)

    def needs(self) -> Needs:
        return Needs(student_layers=list(self.s_layers), teacher_layers=list(self.t_layers))

    def pairs(self, student, teachers) -> list[tuple[Tensor, Tensor]]:
        t = one_teacher(teachers, self.name)
        return [(student.features[a], t.features[b]) for a, b in zip(self.s_layers, self.t_layers)]


# ----------------------------------------------------------------------------- shape helpers
def as_map(x: Tensor) -> Tensor:
    """(B, C) -> (B, C, 1, 1); (B, C, L) -> (B, C, L, 1); maps pass through."""
    if x.dim() == 2:
        return x[:, :, None, None]
    if x.dim() == 3:
        return x[..., None]
    return x


def spatial(x: Tensor) -> tuple[int, int]:
    return tuple(as_map(x).shape[2:])  # type: ignore[return-value]


def pool_to_smaller(fs: Tensor, ft: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool the larger of two maps to the other's spatial size (RepDistiller's rule
    for AT, VID, NST), so methods compare maps of the same resolution."""
    fs, ft = as_map(fs), as_map(ft)
    hs, ws = fs.shape[2:]
    ht, wt = ft.shape[2:]
    if hs * ws > ht * wt:
        fs = F.adaptive_avg_pool2d(fs, (ht, wt))
    elif ht * wt > hs * ws:
        ft = F.adaptive_avg_pool2d(ft, (hs, ws))
    return fs, ft


def flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1)


class Connector(nn.Module):
    """1x1 conv + BN from student to teacher channels (AB, OFD); resizes to the teacher's
    spatial size by average pooling (or nearest upsampling) when the two differ."""

    def __init__(self, cin: int, cout: int, out_size: tuple[int, int]):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.out_size = tuple(out_size)
        n = cout  # He init as in the papers' connectors
        nn.init.normal_(self.conv.weight, 0, (2.0 / n) ** 0.5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(as_map(x)))
        return resize(x, self.out_size)


def resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(x.shape[2:]) == tuple(size):
        return x
    if x.shape[2] >= size[0] and x.shape[3] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="nearest")


class ConvRegressor(nn.Module):
    """FitNets' regressor as in RepDistiller's ConvReg: a conv that maps the student map onto
    the teacher's channels and size (stride-2 3x3 when the student is twice as large, a 4x4
    transposed conv when half as large, a (1+dh)x(1+dw) valid conv when larger), then BN-ReLU.
    Other size ratios: 1x1 conv, then resize."""

    def __init__(self, s_shape: torch.Size, t_shape: torch.Size):
        super().__init__()
        sc, sh, sw = s_shape[1], s_shape[2], s_shape[3]
        tc, th, tw = t_shape[1], t_shape[2], t_shape[3]
        self.out_size = (th, tw)
        if sh == 2 * th and sw == 2 * tw:
            self.conv = nn.Conv2d(sc, tc, 3, stride=2, padding=1)
        elif 2 * sh == th and 2 * sw == tw:
            self.conv = nn.ConvTranspose2d(sc, tc, 4, stride=2, padding=1)
        elif sh >= th and sw >= tw:
            self.conv = nn.Conv2d(sc, tc, (1 + sh - th, 1 + sw - tw))
        else:
            self.conv = nn.Conv2d(sc, tc, 1)
        self.bn = nn.BatchNorm2d(tc)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(resize(self.conv(as_map(x)), self.out_size)))
