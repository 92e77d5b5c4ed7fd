"""Next-token language modelling: logits (B, T, V) for targets (B, T).

Loss: mean token cross-entropy. Metrics: perplexity = exp(mean token NLL) over every target
token of the split (the primary metric; lower is better), and token accuracy (%). Targets of
-100 (padding of tokenised text) are not tokens: left out of the loss and both metrics.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.registry import TASKS
from kdlab.tasks.base import Task

# Evaluation runs the model on slices of the batch so that a (B, T, V) logit tensor stays
# below this many elements (~64 MB in float32) whatever eval_batch_size is.
EVAL_LOGIT_ELEMENTS = 16_000_000


def token_nll_sum(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits.flatten(0, -2).float(), y.flatten(), reduction="sum")


@TASKS.register("lm", "next-token language modelling: token CE loss; perplexity (primary, lower is better), token accuracy")
class LanguageModelling(Task):
    name = "lm"
    primary_metric = "ppl"
    higher_is_better = False

    def eval_batch(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        x, y = batch["x"], batch["y"]
        per_seq = y.shape[1] * max(int(self.data.num_classes), 1)
        step = max(1, EVAL_LOGIT_ELEMENTS // per_seq)
        nll = torch.zeros((), device=y.device)
        correct = torch.zeros((), device=y.device, dtype=torch.long)
        for i in range(0, len(y), step):
            logits = self.forward(model, {**batch, "x": x[i : i + step]}).float()
            yy = y[i : i + step]
            nll = nll + token_nll_sum(logits, yy)
            correct = correct + (logits.argmax(-1) == yy).sum()  # an argmax is never -100
        return {"loss": nll, "acc": correct, "n": (y != -100).sum()}

    def finalize(self, sums: dict[str, float]) -> dict[str, float]:
        n = max(float(sums["n"]), 1.0)
        nll = float(sums["loss"]) / n
        # Key order matters: `kdlab runs` shows the first test_ metric after the loss.
        return {"loss": nll, "ppl": math.exp(min(nll, 700.0)), "acc": 100.0 * float(sums["acc"]) / n}
