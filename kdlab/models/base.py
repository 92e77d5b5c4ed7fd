"""Shared skeleton of every zoo model: a stem, a sequence of body stages and a head.

A zoo model runs `stage_names` in order (stem first), then the head:
`neck` (e.g. a final BN-ReLU or 1x1 conv; identity for most models) -> `pool` -> flatten
-> `fc`. Distillation methods rely on these plain attributes:

- `stage_names`: module paths of the stem and the body stages, in execution order;
- `hint_points`: module paths of the standard hint points (body-stage outputs, shallow to deep);
- `stage_channels`: output channels (or width) of each entry of `stage_names`;
- `feat_dim`: width of the penultimate feature, the input of `fc`;

and on `features(x, upto)`, `classify(feat)` and `embed(x)`, with
`model(x) == model.classify(model.features(x))`.
"""

from __future__ import annotations

from typing import Optional, Sequence

from torch import Tensor, nn

from kdlab.errors import KdlabError


class ZooModel(nn.Module):
    """Base class. A subclass calls `super().__init__()`, assigns its stem and stage modules
    as attributes, then calls `self.build_head(...)`."""

    stage_names: list[str]
    hint_points: list[str]
    stage_channels: list[int]
    feat_dim: int

    def build_head(
        self,
        *,
        stage_names: Sequence[str],
        stage_channels: Sequence[int],
        feat_dim: int,
        num_classes: int,
        hint_points: Optional[Sequence[str]] = None,
        neck: Optional[nn.Module] = None,
        pool: Optional[nn.Module] = None,
        init: bool = True,
    ) -> None:
        """Attach the head and the stage bookkeeping; `hint_points` defaults to every body stage
        (`stage_names[1:]`); `pool` defaults to global average pooling over 2-D maps."""
        if num_classes < 1:
            raise KdlabError(f"num_classes must be >= 1, got {num_classes}")
        if len(stage_names) != len(stage_channels):
            raise ValueError("stage_names and stage_channels differ in length")
        self.neck = neck if neck is not None else nn.Identity()
        self.pool = pool if pool is not None else nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(feat_dim, num_classes)
        self.stage_names = list(stage_names)
        self.stage_channels = [int(c) for c in stage_channels]
        self.hint_points = list(stage_names[1:] if hint_points is None else hint_points)
        self.feat_dim = int(feat_dim)
        modules = dict(self.named_modules())
        for path in self.stage_names + self.hint_points:
            if path not in modules:
                raise ValueError(f"{type(self).__name__}: no module at path '{path}'")
        if init:
            self.init_weights()

    def init_weights(self) -> None:
        """He (fan-out) init for convolutions, BN to identity; linear layers keep PyTorch's
        default init, with zero bias for the classifier."""
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.fc.bias)

    def _index(self, i: int) -> int:
        n = len(self.stage_names)
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            raise IndexError(f"stage index {i} out of range for {n} stages")
        return j

    def features(self, x: Tensor, upto: Optional[int] = None, start: int = 0) -> Tensor:
        """Run stages `stage_names[start..upto]` inclusive (None: to the last stage). With
        `start > 0`, `x` must be the output of stage `start - 1`."""
        first = self._index(start)
        last = len(self.stage_names) - 1 if upto is None else self._index(upto)
        for name in self.stage_names[first : last + 1]:
            x = self.get_submodule(name)(x)
        return x

    def stage_outputs(self, x: Tensor) -> list[Tensor]:
        """Output of every entry of `stage_names`, in order."""
        outs = []
        for name in self.stage_names:
            x = self.get_submodule(name)(x)
            outs.append(x)
        return outs

    def pooled(self, feat: Tensor) -> Tensor:
        """Penultimate vector (B, feat_dim) from the last stage's output."""
        return self.flatten(self.pool(self.neck(feat)))

    def classify(self, feat: Tensor) -> Tensor:
        """Logits from the last stage's output (neck, pooling, flatten, `fc`)."""
        return self.fc(self.pooled(feat))

    def embed(self, x: Tensor) -> Tensor:
        """Penultimate pooled feature vector (B, feat_dim)."""
        return self.pooled(self.features(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(self.features(x))


def image_channels(input_shape: Sequence[int], model: str) -> int:
    """Input channels of a (C, H, W) image shape; a clear error for anything else."""
    if len(input_shape) != 3:
        raise KdlabError(
            f"model '{model}' takes images of shape (C, H, W); got input_shape {tuple(input_shape)}"
        )
    return int(input_shape[0])


def conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1, relu: bool = True) -> nn.Sequential:
    """Conv2d (no bias, 'same'-style padding) + BatchNorm2d (+ ReLU)."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)
