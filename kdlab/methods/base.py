"""The method contract: a method is an nn.Module that declares what it needs and returns
named losses. Its trainable parts (projectors, memory banks) are submodules, so the engine
optimises and checkpoints them together with the student.

Adding a method is one new file in `kdlab/methods/`:

    @register_method("kd", "Hinton KD: tau^2-scaled KL to the teacher's softened distribution",
                     "Hinton et al. 2015, arXiv:1503.02531")
    class KD(Method):
        class Params(MethodParams):
            tau: float = Field(4.0, gt=0)

        def forward(self, batch, student, teachers):
            ...
            return {"kd": loss}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from kdlab.knowledge.outputs import Outputs  # noqa: F401  (part of the method contract)
from kdlab.errors import KdlabError
from kdlab.registry import METHODS


@dataclass
class Needs:
    """Which knowledge a method reads. Layers are module paths, or `hint:i` for the model's
    i-th standard hint point (negative i counts from the deepest)."""

    student_layers: list[str] = field(default_factory=list)
    teacher_layers: list[str] = field(default_factory=list)
    # Number of teachers the method can use: 1, or None for "any number".
    max_teachers: Optional[int] = 1


@dataclass
class MethodContext:
    """What a method may know about the run when it is built."""

    num_classes: int
    student: nn.Module
    teachers: list[nn.Module]
    train_size: int
    epochs: int
    device: torch.device
    data: Any = None  # the DataBundle (on device), for methods that need train tensors or metadata
    task: Any = None


class MethodParams(BaseModel):
    """Base for a method's hyper-parameters; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class Method(nn.Module):
    name: ClassVar[str] = ""
    Params: ClassVar[type[MethodParams]] = MethodParams

    def __init__(self, params: MethodParams, ctx: MethodContext):
        super().__init__()
        self.params = params
        self.epoch = 0
        self.total_epochs = ctx.epochs

    def needs(self) -> Needs:
        return Needs()

    def build(self, student: Outputs, teachers: list[Outputs]) -> None:
        """Called once with the first batch's outputs, before the optimiser is made: create
        projectors and other parts whose shapes depend on the features."""

    def forward(self, batch: dict[str, Tensor], student: Outputs, teachers: list[Outputs]) -> dict[str, Tensor]:
        raise NotImplementedError

    # Hooks. The default is to do nothing.
    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, epoch: int) -> None:
        pass

    def transform_batch(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Rewrite a training batch before the forward passes (e.g. append paired samples)."""
        return batch

    # Reports: figures a method measured that are not losses.
    def epoch_metrics(self) -> dict[str, float]:
        """Logged each epoch as `train_<name>` (e.g. a preference-inconsistency rate)."""
        return {}

    def summary_stats(self) -> dict[str, Any]:
        """Merged into the run's summary when training ends (instruments such as record_w)."""
        return {}


def register_method(name: str, description: str, reference: str = ""):
    def deco(cls):
        cls.name = name
        return METHODS.register(name, description, reference)(cls)

    return deco


def need_teachers(method: str, teachers: list[Outputs]) -> list[Outputs]:
    """The one check that a method got its teacher(s); configs refuse a method that needs one
    without a `teacher:` section, so this fires only when a method is used from code."""
    if not teachers:
        raise KdlabError(f"method '{method}' needs a teacher: add a `teacher:` or `teachers:` section")
    return teachers


def one_teacher(teachers: list[Outputs], method: str = "this method") -> Outputs:
    return need_teachers(method, teachers)[0]
