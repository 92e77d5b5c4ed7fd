"""A task says how a model is run on a batch and how predictions are scored.

Evaluation is written as sums over batches (`eval_batch` returns summed statistics and a
count `n`), so the engine can add them up across batches and across DDP ranks before
`finalize` turns them into metrics.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from kdlab.knowledge.adapters import call_model, logits_of
from kdlab.registry import TASKS


class Task:
    name: ClassVar[str] = ""
    primary_metric: ClassVar[str] = "top1"
    higher_is_better: ClassVar[bool] = True
    # The plain supervised method: how a teacher is trained when its config names none.
    default_method: ClassVar[str] = "ce"

    def __init__(self, data):
        self.data = data

    def forward(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        """The model's logits on a batch, whatever the model returns (a tensor, a Hugging Face
        ModelOutput, a tuple or a dict; see `kdlab.knowledge.adapters`)."""
        return logits_of(call_model(model, batch["x"], batch.get("attention_mask")), model)

    def eval_batch(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        raise NotImplementedError

    def finalize(self, sums: dict[str, float]) -> dict[str, float]:
        raise NotImplementedError

    def better(self, a: float, b: float | None) -> bool:
        if b is None:
            return True
        return a > b if self.higher_is_better else a < b


def get_task(data) -> Task:
    return TASKS.get(data.task).obj(data)
