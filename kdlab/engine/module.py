"""The student's side of a step (student + methods in one module, what the optimiser and DDP
see) and the teachers' side (eval mode, inference mode, features through taps)."""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import Tensor, nn

from kdlab.knowledge.outputs import Outputs
from kdlab.knowledge.taps import FeatureTap
from kdlab.methods.base import Method
from kdlab.tasks.base import Task


class DistillModule(nn.Module):
    """forward(batch, teachers) -> (weighted total, named terms)."""

    def __init__(self, student: nn.Module, methods: list[Method], weights: list[float], task: Task):
        super().__init__()
        self.student = student
        self.methods = nn.ModuleList(methods)
        self.weights = list(weights)
        self.task = task
        self.tap: Optional[FeatureTap] = None

    def student_outputs(self, batch: dict[str, Tensor]) -> Outputs:
        out = self.task.forward(self.student, batch)
        feats = self.tap.pop() if self.tap else {}
        if isinstance(out, Outputs):
            out.features.update(feats)
            return out
        return Outputs(logits=out, features=feats)

    def forward(self, batch: dict[str, Tensor], teachers: list[Outputs]):
        s_out = self.student_outputs(batch)
        total: Tensor | float = 0.0
        terms: dict[str, Tensor] = {}
        for i, (m, w) in enumerate(zip(self.methods, self.weights)):
            for k, v in m(batch, s_out, teachers).items():
                key = k if k not in terms else f"{m.name}{i}.{k}"
                terms[key] = v.detach()
                total = total + w * v
        return total, terms


def teacher_outputs(task: Task, teacher: nn.Module, tap: Optional[FeatureTap], batch: dict[str, Tensor],
                    autocast=None) -> Outputs:
    """A teacher's outputs on a batch, under inference mode, cloned so they may enter the
    student's autograd graph (inference tensors cannot). A teacher held in half precision
    (`teacher.dtype: bf16`, `kdlab.models.precision`) has its outputs upcast to float32, so the
    losses are computed as for a float32 teacher."""
    half = held_in_half(teacher)

    def own(v: Tensor) -> Tensor:  # a copy either way (inference tensors cannot enter autograd)
        return v.to(torch.float32, copy=True) if half is not None and v.is_floating_point() else v.clone()

    with torch.inference_mode(), (autocast or contextlib.nullcontext()):
        o = task.forward(teacher, batch)
        feats = tap.pop() if tap else {}
    extras = {}
    if isinstance(o, Outputs):
        feats = {**o.features, **feats}
        extras = {k: (own(v) if isinstance(v, Tensor) else v) for k, v in o.extras.items()}
        o = o.logits
    return Outputs(
        logits=own(o) if o is not None else None,
        features={k: own(v) for k, v in feats.items()},
        extras=extras,
    )


def held_in_half(model: nn.Module) -> Optional[torch.dtype]:
    """The model's parameter dtype when it is bfloat16 or float16, else None."""
    p = next(model.parameters(), None)
    return p.dtype if p is not None and p.dtype in (torch.bfloat16, torch.float16) else None
