"""CTKD: a learnable distillation temperature trained adversarially (through gradient
reversal) to make the KD loss harder, with a curriculum on the reversal strength."""

from __future__ import annotations

import math
from typing import Optional

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from kdlab.methods.base import Method, MethodParams, one_teacher, register_method
from kdlab.methods.logit_utils import check_same_width, softened_kl_per_sample


class _ReverseGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by -lam (Ganin & Lempitsky 2015)."""

    @staticmethod
    def forward(ctx, x, lam: float):
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.lam * grad, None


def reverse_grad(x: Tensor, lam: float) -> Tensor:
    return _ReverseGrad.apply(x, lam)


def cosine_lambda(epoch: int, loops: int, lam_max: float, lam_min: float = 0.0) -> float:
    """CTKD's curriculum: lambda rises from lam_min to lam_max along half a cosine over the
    first `loops` epochs, then stays. The official code evaluates it at 1-based epochs
    (lambda_1 = (1 - cos(pi / loops)) / 2 * lam_max); kdlab's epochs are 0-based."""
    if loops <= 0:
        return lam_max
    i = min(epoch + 1, loops)
    return lam_min + (lam_max - lam_min) * (1 - math.cos(math.pi * i / loops)) / 2


@register_method(
    "ctkd",
    "curriculum temperature KD: KD with a learnable global temperature bounded to (tau_min, tau_max), "
    "trained through gradient reversal whose strength follows a cosine curriculum",
    "Li et al. 2023, arXiv:2211.16231",
)
class CTKD(Method):
    class Params(MethodParams):
        # The official CIFAR script: tau = 1 + 20 * sigmoid(theta), theta initialised to 1
        # (tau ~ 15.6), lambda 0 -> 1 over 10 epochs.
        tau_min: float = Field(1.0, gt=0)
        tau_max: float = Field(21.0, gt=0)
        # Initial temperature; None keeps the official init theta = 1.
        tau_init: Optional[float] = Field(None, gt=0)
        lambda_max: float = Field(1.0, ge=0)
        lambda_epochs: int = Field(10, ge=0)

        @model_validator(mode="after")
        def _range(self):
            if self.tau_max <= self.tau_min:
                raise ValueError(f"tau_max ({self.tau_max}) must exceed tau_min ({self.tau_min})")
            if self.tau_init is not None and not self.tau_min < self.tau_init < self.tau_max:
                raise ValueError(f"tau_init must lie strictly between tau_min and tau_max (got {self.tau_init})")
            return self

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        p = params
        if p.tau_init is None:
            theta = 1.0
        else:
            u = (p.tau_init - p.tau_min) / (p.tau_max - p.tau_min)
            theta = math.log(u / (1 - u))
        # The sigmoid bounds the temperature to (tau_min, tau_max) whatever the optimiser does.
        self.theta = nn.Parameter(torch.tensor([theta]))

    def temperature(self) -> Tensor:
        p = self.params
        return p.tau_min + (p.tau_max - p.tau_min) * torch.sigmoid(self.theta)

    def current_lambda(self) -> float:
        return cosine_lambda(self.epoch, self.params.lambda_epochs, self.params.lambda_max)

    def forward(self, batch, student, teachers):
        t = one_teacher(teachers, self.name)
        check_same_width(self.name, student.logits, [t.logits])
        p = self.params
        theta = reverse_grad(self.theta, self.current_lambda())
        tau = p.tau_min + (p.tau_max - p.tau_min) * torch.sigmoid(theta)
        return {"ctkd": softened_kl_per_sample(student.logits, t.logits, tau).mean()}
