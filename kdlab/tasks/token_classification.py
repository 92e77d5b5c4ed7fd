"""Per-token classification (named entities, parts of speech): logits (B, T, C) for labels (B, T).

A position counts when its label is not -100 (sub-tokens after a word's first, special tokens,
padding: the Hugging Face convention) and, when the batch has one, its attention mask is 1.
Loss: mean cross-entropy over the counted positions. Metric: token accuracy (%, the primary
metric) over the same positions, summed over the whole split before dividing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.data.batching import IGNORE_INDEX
from kdlab.errors import KdlabError
from kdlab.registry import TASKS
from kdlab.tasks.base import Task



def counted_positions(batch: dict[str, Tensor], y: Tensor) -> Tensor:
    """Bool (B, T): the labelled, unpadded positions."""
    keep = y != IGNORE_INDEX
    mask = batch.get("attention_mask")
    return keep if mask is None else keep & mask.bool()


@TASKS.register("token_classification",
                "per-token classification (e.g. NER): CE over labelled tokens (-100 ignored), token accuracy")
class TokenClassification(Task):
    name = "token_classification"
    primary_metric = "acc"

    def eval_batch(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        logits = self.forward(model, batch).float()
        y = batch["y"]
        if logits.shape[:-1] != y.shape:
            raise KdlabError(f"token classification needs logits (batch, tokens, classes) for labels {tuple(y.shape)}; "
                             f"the model gave {tuple(logits.shape)}: use a token-classification head")
        keep = counted_positions(batch, y)
        logits, y = logits[keep], y[keep]
        return {"loss": F.cross_entropy(logits, y, reduction="sum"), "acc": (logits.argmax(-1) == y).sum(),
                "n": keep.sum()}

    def finalize(self, sums: dict[str, float]) -> dict[str, float]:
        n = max(float(sums["n"]), 1.0)
        return {"loss": float(sums["loss"]) / n, "acc": 100.0 * float(sums["acc"]) / n}
