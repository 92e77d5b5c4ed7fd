"""LightGCN: embeddings propagated over the normalised user-item graph without weights or
non-linearities; the final embedding is the mean over layers 0..K (He et al. 2020)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from kdlab.models.recsys_mf import MF, check_sizes
from kdlab.errors import KdlabError
from kdlab.registry import MODELS


class LightGCN(MF):
    def __init__(self, num_users: int, num_items: int, dim: int, adjacency: Tensor, layers: int, init_std: float = 0.1):
        super().__init__(num_users, num_items, dim, init_std)
        self.layers = layers
        # The graph comes from the data on every build: not saved with the weights.
        self.register_buffer("adjacency", adjacency.coalesce(), persistent=False)
        self._cache: Optional[tuple] = None

    def propagate(self) -> tuple[Tensor, Tensor]:
        e = torch.cat([self.user.weight, self.item.weight])
        acc = e
        for _ in range(self.layers):
            e = torch.sparse.mm(self.adjacency, e)
            acc = acc + e
        acc = acc / (self.layers + 1)
        return acc[: self.num_users], acc[self.num_users :]

    def tables(self) -> tuple[Tensor, Tensor]:
        if self.training or torch.is_grad_enabled():
            return self.propagate()
        # Frozen use (a teacher, evaluation): propagate once per weight version, outside
        # inference mode so the cached tables are ordinary tensors usable in autograd graphs.
        key = (self.user.weight._version, self.item.weight._version, self.user.weight.data_ptr(), self.adjacency.device)
        if self._cache is None or self._cache[0] != key:
            with torch.inference_mode(False), torch.no_grad():
                self._cache = (key, self.propagate())
        return self._cache[1]

    def forward(self, users: Tensor) -> Tensor:
        u, i = self.tables()
        return u[users] @ i.T


@MODELS.register(
    "lightgcn",
    "LightGCN: MF embeddings averaged over `layers` rounds of sparse propagation on the normalised user-item graph",
    "He et al. 2020, arXiv:2002.02126",
)
def lightgcn(
    num_classes: int = 0,
    input_shape: tuple = (),
    num_users: Optional[int] = None,
    num_items: Optional[int] = None,
    adjacency: Optional[torch.Tensor] = None,
    dim: int = 64,
    layers: int = 3,
    init_std: float = 0.1,
) -> nn.Module:
    check_sizes("lightgcn", num_users, num_items, dim)
    if adjacency is None:
        raise KdlabError("model 'lightgcn' needs the interaction graph: use it with ranking data (interactions, recsys_synthetic)")
    if layers < 0:
        raise KdlabError(f"model 'lightgcn': layers must be >= 0, got {layers}")
    return LightGCN(num_users, num_items, dim, adjacency, layers, init_std)
