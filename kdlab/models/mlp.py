"""Multi-layer perceptron for vectors (or anything, flattened)."""

from __future__ import annotations

import math

from torch import nn

from kdlab.errors import KdlabError
from kdlab.models.base import ZooModel
from kdlab.registry import MODELS


class MLP(ZooModel):
    """`stem` flattens the input; `blocks.i` is Linear + ReLU (+ Dropout); `fc` classifies."""

    def __init__(self, num_classes: int, in_features: int, hidden: list[int], dropout: float = 0.0):
        super().__init__()
        self.stem = nn.Flatten(1)
        blocks = []
        width = in_features
        for h in hidden:
            layers: list[nn.Module] = [nn.Linear(width, h), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            blocks.append(nn.Sequential(*layers))
            width = h
        self.blocks = nn.ModuleList(blocks)
        names = ["stem"] + [f"blocks.{i}" for i in range(len(hidden))]
        self.build_head(
            stage_names=names,
            stage_channels=[in_features, *hidden],
            feat_dim=width,
            num_classes=num_classes,
            pool=nn.Identity(),
            init=False,  # PyTorch's default Linear init
        )


@MODELS.register(
    "mlp",
    "MLP: flatten, Linear+ReLU(+Dropout) blocks of widths `hidden`, linear classifier "
    "(0.06M params for (64,) input, 100 classes, default hidden=[256, 128])",
    "Rumelhart et al. 1986, doi:10.1038/323533a0",
)
def mlp(
    num_classes: int,
    input_shape: tuple[int, ...],
    hidden: list[int] = [256, 128],
    dropout: float = 0.0,
) -> nn.Module:
    if any(h < 1 for h in hidden):
        raise KdlabError(f"mlp: hidden widths must be >= 1, got {hidden}")
    if not 0.0 <= dropout < 1.0:
        raise KdlabError(f"mlp: dropout must be in [0, 1), got {dropout}")
    if len(input_shape) == 0 or any(d < 1 for d in input_shape):
        raise KdlabError(f"mlp: bad input_shape {tuple(input_shape)}")
    return MLP(num_classes, math.prod(input_shape), list(hidden), dropout)
