"""A teacher answered from its output cache (`kdlab.store.tensorcache`) instead of its
forward pass: rows are found by the batch's sample `index` (and, for augmented data, the
`view` the loader handed the student), so a rank under torchrun reads only its own share.

Without views the stored outputs are the teacher's own on the same samples: a float32 cache
gives the uncached run bit for bit. With `views: K`, the K augmented images of every sample
are stored next to the teacher's outputs on them, and `pick` hands the student, each epoch,
one of them (teacher and student see the same image).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from kdlab.knowledge.outputs import Outputs
from kdlab.seeding import derive, generator
from kdlab.store.tensorcache import TensorCache


def topk_fields(logits: Tensor, k: int) -> dict[str, Tensor]:
    """The k largest logits of each row (values, indices) and the log of the summed exp of
    the others (`rest`): enough to restore the softmax's top-k probabilities and the mass
    left to the rest."""
    values, indices = logits.float().topk(k, dim=-1)
    rest = logits.float().scatter(-1, indices, float("-inf")).logsumexp(-1)
    return {"values": values, "indices": indices.int(), "rest": rest}


def from_topk(values: Tensor, indices: Tensor, rest: Tensor, width: int) -> Tensor:
    """Logits whose softmax (temperature 1) has the stored top-k probabilities and spreads
    the remaining mass evenly over the other classes."""
    others = width - values.shape[-1]
    fill = rest - math.log(others) if others else rest
    out = fill.unsqueeze(-1).expand(*values.shape[:-1], width).clone()
    return out.scatter(-1, indices.long(), values)


class CachedTeacher:
    def __init__(self, cache: TensorCache, device: torch.device):
        self.cache, self.device = cache, device
        m = cache.manifest
        self.views, self.samples, self.topk = int(m["views"]), int(m["samples"]), m.get("topk")
        self.width = m.get("width")
        self.features: dict[str, str] = m.get("features", {})  # layer -> field

    def holds(self, batch: dict[str, Tensor]) -> bool:
        """Whether the cache answers this batch (with views: one the loader drew from them;
        the first pass that sizes methods' projectors sees plain samples and asks the teacher)."""
        return "index" in batch and (not self.views or "view" in batch)

    def _rows(self, batch: dict[str, Tensor]) -> np.ndarray:
        rows = batch["index"].long()
        if self.views:
            rows = rows + batch["view"].long() * self.samples
        return rows.cpu().numpy()

    def _tensor(self, field: str, rows: np.ndarray, dtype: Optional[torch.dtype] = torch.float32) -> Tensor:
        t = torch.from_numpy(self.cache.read(field, rows))
        return t.to(self.device, dtype) if dtype is not None else t.to(self.device)

    def teacher_outputs(self, batch: dict[str, Tensor]) -> Outputs:
        rows = self._rows(batch)
        if self.topk:
            logits = from_topk(self._tensor("logits.values", rows), self._tensor("logits.indices", rows, None),
                               self._tensor("logits.rest", rows), self.width)
        else:
            logits = self._tensor("logits", rows)
        feats = {layer: self._tensor(field, rows) for layer, field in self.features.items()}
        return Outputs(logits=logits, features=feats)

    def pick(self, index: Tensor, epoch: int, seed: int) -> dict[str, Tensor]:
        """The stored view of each sample for this epoch: view (offset_i + epoch) mod K, with
        offsets drawn from the training seed, so every view is shown once in K epochs."""
        offsets = torch.randint(0, self.views, (self.samples,), generator=generator(derive(seed, 5)))
        view = (offsets[index.cpu()] + epoch) % self.views
        rows = (index.cpu() + view * self.samples).numpy()
        x = torch.from_numpy(self.cache.read("x", rows)).to(self.device)
        return {"x": x.float() if x.dtype == torch.float16 else x, "view": view.to(index.device)}
