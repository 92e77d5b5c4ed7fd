"""Subclass head (Müller, Kornblith & Hinton 2020): any zoo model whose `fc` emits C·s
subclass logits, with class logits obtained by log-sum-exp over each class's s subclasses.

Class c owns subclass logits c·s … c·s+s−1, so softmax(class logits) equals the summed
subclass probabilities. `model(x)` returns the class logits (CE, metrics and ordinary KD
work unchanged); the subclass logits pass through the identity module `subclass_logits`,
so a method reads them by tapping that path (`Needs(student_layers=["subclass_logits"])`).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from kdlab.config.signature import validate_params
from kdlab.errors import KdlabError
from kdlab.registry import MODELS

SUBCLASS_LAYER = "subclass_logits"


def group_logits(z: Tensor, num_classes: int, subclasses: int) -> Tensor:
    """(B, C·s) subclass logits -> (B, C) class logits, logsumexp within each class."""
    return torch.logsumexp(z.reshape(z.shape[0], num_classes, subclasses), dim=-1)


class SubclassModel(nn.Module):
    def __init__(self, base: nn.Module, num_classes: int, subclasses: int):
        super().__init__()
        self.base = base
        self.num_classes = int(num_classes)
        self.subclasses = int(subclasses)
        self.subclass_logits = nn.Identity()  # tap point for the (B, C·s) subclass logits
        # Zoo bookkeeping, re-rooted under `base.` so taps and `hint:i` keep working.
        for attr in ("stage_names", "hint_points"):
            if hasattr(base, attr):
                setattr(self, attr, [f"base.{p}" for p in getattr(base, attr)])
        for attr in ("stage_channels", "feat_dim"):
            if hasattr(base, attr):
                setattr(self, attr, getattr(base, attr))

    @property
    def fc(self) -> nn.Module:
        return self.base.fc

    def group(self, z: Tensor) -> Tensor:
        return group_logits(self.subclass_logits(z), self.num_classes, self.subclasses)

    def subclass_forward(self, x: Tensor) -> Tensor:
        """The (B, C·s) subclass logits."""
        return self.base(x)

    def features(self, x: Tensor, upto: Optional[int] = None, start: int = 0) -> Tensor:
        return self.base.features(x, upto, start)

    def pooled(self, feat: Tensor) -> Tensor:
        return self.base.pooled(feat)

    def classify(self, feat: Tensor) -> Tensor:
        return self.group(self.base.classify(feat))

    def embed(self, x: Tensor) -> Tensor:
        return self.base.embed(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.group(self.base(x))


@MODELS.register(
    "subclass",
    "subclass head: wraps any zoo model `base: {name, params}` with C·`subclasses` outputs; class "
    "logits are the log-sum-exp over each class's subclass logits (tap `subclass_logits`)",
    "Müller, Kornblith & Hinton 2020, arXiv:2002.03936",
)
def subclass(num_classes: int, input_shape: tuple[int, ...], base: dict[str, Any], subclasses: int = 5, **model_args) -> nn.Module:
    if subclasses < 1:
        raise KdlabError(f"subclass: subclasses must be >= 1, got {subclasses}")
    if not isinstance(base, dict) or "name" not in base or set(base) - {"name", "params"}:
        raise KdlabError("subclass: `base` must be a mapping {name: MODEL, params: {...}}, e.g. {name: mlp, params: {hidden: [128]}}")
    name = base["name"]
    if name == "subclass":
        raise KdlabError("subclass: `base` must be an ordinary zoo model, not another subclass head")
    entry = MODELS.get(name)
    try:
        params = validate_params(entry.obj, dict(base.get("params") or {}), f"subclass base model '{name}'")
    except ValueError as e:
        raise KdlabError(str(e)) from None
    inner = entry.obj(num_classes=num_classes * subclasses, input_shape=input_shape, **model_args, **params)
    return SubclassModel(inner, num_classes, subclasses)
