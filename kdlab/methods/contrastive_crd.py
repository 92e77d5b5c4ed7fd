"""Contrastive representation distillation: NCE between student and teacher embeddings, with a
memory bank of momentum-updated embeddings of every training sample as negatives."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kdlab.errors import KdlabError
from kdlab.methods.base import MethodContext, register_method
from kdlab.methods.feature_layers import FeatureMethod, LayerParams, flat


def nce_loss(scores: Tensor, n_data: int, eps: float = 1e-7) -> Tensor:
    """NCE with the positive in column 0 and K noise samples from the uniform Pn = 1/N:
    -[log h(pos) + sum log(1 - h(neg))] / B, h(x) = x / (x + K Pn)."""
    b, k = scores.shape[0], scores.shape[1] - 1
    noise = k / n_data
    pos = scores[:, 0]
    log_d1 = torch.log(pos / (pos + noise + eps))
    log_d0 = torch.log(noise / (scores[:, 1:] + noise + eps))
    return -(log_d1.sum() + log_d0.sum()) / b


class ContrastMemory(nn.Module):
    """Two banks (student, teacher) of unit embeddings, one row per training sample. Scores are
    exp(<bank row, query> / T) divided by a constant Z fixed on the first batch (Z = mean
    score x N), as in the official code; rows of the batch's own samples move towards the new
    embedding with momentum and are re-normalised."""

    def __init__(self, dim: int, n_data: int, tau: float, momentum: float):
        super().__init__()
        self.n_data, self.tau, self.momentum = n_data, tau, momentum
        stdv = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("memory_s", torch.rand(n_data, dim) * 2 * stdv - stdv)
        self.register_buffer("memory_t", torch.rand(n_data, dim) * 2 * stdv - stdv)
        self.register_buffer("z_s", torch.tensor(-1.0))
        self.register_buffer("z_t", torch.tensor(-1.0))

    def scores(self, query: Tensor, bank: Tensor, idx: Tensor, z: Tensor) -> Tensor:
        if bank.shape[0] <= 8 * idx.shape[1]:
            # A bank not much larger than the K+1 rows drawn (CIFAR: 50k vs 16k): one matmul
            # against every row and a column pick beats materialising a (B, K+1, D) gather.
            # (The clone: autograd keeps the bank for the query's gradient, and the bank is
            # updated in place before backward.)
            dots = (query @ bank.clone().T).gather(1, idx)
        else:
            dots = torch.bmm(bank[idx], query.unsqueeze(2)).squeeze(2)  # (B, K+1)
        out = torch.exp(dots / self.tau)
        if float(z) < 0:  # fixed once, from the first training batch
            z.fill_(float(out.detach().mean()) * self.n_data)
        return out / z

    def forward(self, v_s: Tensor, v_t: Tensor, index: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        out_s = self.scores(v_s, self.memory_t, idx, self.z_s)  # student query vs teacher bank
        out_t = self.scores(v_t, self.memory_s, idx, self.z_t)  # teacher query vs student bank
        with torch.no_grad():
            self.update(self.memory_s, v_s, index)
            self.update(self.memory_t, v_t, index)
        return out_s, out_t

    def update(self, bank: Tensor, v: Tensor, index: Tensor) -> None:
        rows = bank[index] * self.momentum + v.detach().to(bank.dtype) * (1 - self.momentum)
        bank.index_copy_(0, index, F.normalize(rows, dim=1))


@register_method(
    "crd",
    "contrastive representation distillation: NCE between embedded student/teacher penultimate features, memory bank of negatives",
    "Tian et al. 2020, arXiv:1910.10699",
)
class CRD(FeatureMethod):
    """Embeddings: linear + L2 normalisation of each side's penultimate vector (`flatten`).
    Negatives: `nce_k` training samples per query, drawn from other classes ('other_class',
    RepDistiller's default) or from the whole set ('uniform'); the positive is the sample
    itself (`batch["index"]`). Loss: NCE of the student query against the teacher bank plus the
    teacher query against the student bank. Memory banks are buffers, saved in checkpoints.
    Under DDP each rank updates its own copy of the bank (rows of other ranks' samples lag)."""

    default_layers = "flatten"

    class Params(LayerParams):
        layer_count = 1
        feat_dim: int = Field(128, ge=1)
        nce_k: int = Field(16384, ge=1)
        tau: float = Field(0.07, gt=0)
        momentum: float = Field(0.5, ge=0, lt=1)
        negatives: Literal["other_class", "uniform"] = "other_class"

    def __init__(self, params, ctx: MethodContext):
        super().__init__(params, ctx)
        if ctx.train_size < 2:
            raise KdlabError("crd needs a training set of at least 2 samples for its memory bank")
        self.n_data = int(ctx.train_size)
        self.memory = ContrastMemory(params.feat_dim, self.n_data, params.tau, params.momentum)
        y = None
        if params.negatives == "other_class":
            train = getattr(getattr(ctx, "data", None), "train", None)
            y = train.labels() if train is not None else None  # streamed: the labels only, inputs unread
            if y is None or y.dim() != 1:
                raise KdlabError("crd negatives='other_class' needs class labels `y` in the training data; use negatives: uniform")
        self._set_classes(y)

    def _set_classes(self, y) -> None:
        """Sorting indices by class makes 'any sample not of class c' a contiguous range with a
        hole, so negatives are drawn with one randint (no per-class index lists)."""
        if y is None:
            self.register_buffer("order", torch.arange(self.n_data), persistent=False)
            self.register_buffer("start", torch.zeros(1, dtype=torch.long), persistent=False)
            self.register_buffer("count", torch.zeros(1, dtype=torch.long), persistent=False)
            self.by_class = False
            return
        y = y.detach().long().cpu()
        order = torch.argsort(y, stable=True)
        k = int(y.max()) + 1
        count = torch.bincount(y, minlength=k)
        start = torch.cumsum(count, 0) - count
        if bool((count == self.n_data).any()):
            raise KdlabError("crd negatives='other_class' needs at least two classes in the training data")
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("start", start, persistent=False)
        self.register_buffer("count", count, persistent=False)
        self.by_class = True

    def sample(self, index: Tensor, y: Tensor | None) -> Tensor:
        """(B, K+1) bank rows: the sample itself, then K negatives."""
        b, k = index.shape[0], self.params.nce_k
        dev = index.device
        if self.by_class:
            c = y.long()
            start, count = self.start[c].unsqueeze(1), self.count[c].unsqueeze(1)
            r = (torch.rand(b, k, device=dev) * (self.n_data - count)).long()
            r = torch.where(r >= start, r + count, r)  # skip the block of the query's class
            neg = self.order.to(dev)[r]
        else:
            neg = torch.randint(0, self.n_data, (b, k), device=dev)
        return torch.cat([index.unsqueeze(1), neg], dim=1)

    def build(self, student, teachers):
        (s, t), = self.pairs(student, teachers)
        self.embed_s = nn.Linear(flat(s).shape[1], self.params.feat_dim)
        self.embed_t = nn.Linear(flat(t).shape[1], self.params.feat_dim)

    def forward(self, batch, student, teachers):
        if "index" not in batch:
            raise KdlabError("crd needs each batch's sample indices (`index`); this data loader gives none")
        (s, t), = self.pairs(student, teachers)
        v_s = F.normalize(self.embed_s(flat(s).float()), dim=1)
        v_t = F.normalize(self.embed_t(flat(t).float()), dim=1)
        index = batch["index"].long()
        idx = self.sample(index, batch.get("y") if self.by_class else None)
        out_s, out_t = self.memory(v_s, v_t, index, idx)
        return {"crd": nce_loss(out_s, self.n_data) + nce_loss(out_t, self.n_data)}
