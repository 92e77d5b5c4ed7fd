"""Classification: cross-entropy, top-1, and top-5 where there are at least 5 classes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.registry import TASKS
from kdlab.tasks.base import Task


@TASKS.register("classification", "single-label classification: CE loss, top-1/top-5 accuracy")
class Classification(Task):
    name = "classification"
    primary_metric = "top1"

    def eval_batch(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        logits = self.forward(model, batch).float()
        y = batch["y"]
        out = {
            "loss": F.cross_entropy(logits, y, reduction="sum"),
            "top1": (logits.argmax(1) == y).sum(),
            "n": torch.tensor(len(y), device=y.device),
        }
        if logits.shape[1] >= 5:
            top5 = logits.topk(5, dim=1).indices
            out["top5"] = (top5 == y[:, None]).any(1).sum()
        return out

    def finalize(self, sums: dict[str, float]) -> dict[str, float]:
        n = max(sums["n"], 1)
        out = {"loss": sums["loss"] / n, "top1": 100.0 * sums["top1"] / n}
        if "top5" in sums:
            out["top5"] = 100.0 * sums["top5"] / n
        return out
