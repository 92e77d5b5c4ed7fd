"""What a model said about a batch: the currency between models, tasks, methods and the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from torch import Tensor


@dataclass
class Outputs:
    """Logits, tapped features by the layer string a method asked for, and task extras."""

    logits: Optional[Tensor] = None
    features: dict[str, Tensor] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
