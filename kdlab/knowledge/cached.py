"""A teacher answered from its output cache (`kdlab.store.tensorcache`) instead of its
forward pass: rows are found by the batch's sample `index` (and, for augmented data, the
`view` the loader handed the student), so a rank under torchrun reads only its own share.

Without views the stored outputs are the teacher's own on the same samples: a float32 cache
gives the uncached run bit for bit. With `views: K`, the K augmented images of every sample
are stored next to the teacher's outputs on them, and `pick` hands the student, each epoch,
one of them (teacher and student see the same image).

A top-k cache (k below the width) or a sampled cache answers with `SparseTeacherOutputs`: the
token-level divergences read the sparse distribution, other methods get dense logits built on
first use. A top-k cache with k >= the width holds every logit and answers with them exactly.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from kdlab.knowledge.outputs import Outputs
from kdlab.knowledge.sparse_logits import SampledLogits, SparseTeacherOutputs, TopKLogits, from_topk, topk_fields  # noqa: F401
from kdlab.seeding import derive, generator
from kdlab.store.tensorcache import TensorCache


class CachedTeacher:
    def __init__(self, cache: TensorCache, device: torch.device):
        self.cache, self.device = cache, device
        m = cache.manifest
        self.views, self.samples, self.topk = int(m["views"]), int(m["samples"]), m.get("topk")
        self.sampled = m.get("sampled")  # k draws per row from the teacher (a sampled cache)
        self.width = m.get("width")
        # A top-k cache with k >= the vocabulary holds every logit: answered densely, exactly.
        self.kept = m["fields"]["logits.values"]["shape"][-1] if self.topk else None
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
        feats = {layer: self._tensor(field, rows) for layer, field in self.features.items()}
        if self.sampled:
            sparse = SampledLogits(self._tensor("logits.ids", rows, None), self._tensor("logits.entropy", rows))
            return SparseTeacherOutputs(sparse, self.width, feats)
        if self.topk:
            sparse = TopKLogits(self._tensor("logits.values", rows), self._tensor("logits.indices", rows, None),
                                self._tensor("logits.rest", rows))
            if self.kept < self.width:
                return SparseTeacherOutputs(sparse, self.width, feats)
            return Outputs(logits=sparse.dense(self.width), features=feats)
        return Outputs(logits=self._tensor("logits", rows), features=feats)

    def pick(self, index: Tensor, epoch: int, seed: int) -> dict[str, Tensor]:
        """The stored view of each sample for this epoch: view (offset_i + epoch) mod K, with
        offsets drawn from the training seed, so every view is shown once in K epochs."""
        offsets = torch.randint(0, self.views, (self.samples,), generator=generator(derive(seed, 5)))
        view = (offsets[index.cpu()] + epoch) % self.views
        rows = (index.cpu() + view * self.samples).numpy()
        x = torch.from_numpy(self.cache.read("x", rows)).to(self.device)
        return {"x": x.float() if x.dtype == torch.float16 else x, "view": view.to(index.device)}
