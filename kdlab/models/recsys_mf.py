"""BPR matrix factorisation: a user and an item embedding table, score = <e_u, e_i>.

Ranking backbones expose `tables() -> (users, items)`, the full embedding tables the ranking
task scores with; `dim` is the embedding size."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from kdlab.errors import KdlabError
from kdlab.registry import MODELS


def check_sizes(name: str, num_users: Optional[int], num_items: Optional[int], dim: int) -> None:
    if num_users is None or num_items is None:
        raise KdlabError(f"model '{name}' is a recommender backbone: use it with ranking data (interactions, recsys_synthetic)")
    if dim < 1:
        raise KdlabError(f"model '{name}': dim must be >= 1, got {dim}")


class MF(nn.Module):
    def __init__(self, num_users: int, num_items: int, dim: int, init_std: float = 0.1):
        super().__init__()
        self.num_users, self.num_items, self.dim = num_users, num_items, dim
        self.user = nn.Embedding(num_users, dim)
        self.item = nn.Embedding(num_items, dim)
        nn.init.normal_(self.user.weight, std=init_std)
        nn.init.normal_(self.item.weight, std=init_std)

    def tables(self) -> tuple[Tensor, Tensor]:
        return self.user.weight, self.item.weight

    def forward(self, users: Tensor) -> Tensor:
        """Scores of the given users over all items."""
        return self.user(users) @ self.item.weight.T


@MODELS.register(
    "bpr_mf",
    "matrix factorisation (user/item embeddings of size dim, dot-product score), trained with the `bpr` method",
    "Rendle et al. 2009, arXiv:1205.2618 (BPR)",
)
def bpr_mf(
    num_classes: int = 0,
    input_shape: tuple = (),
    num_users: Optional[int] = None,
    num_items: Optional[int] = None,
    adjacency: Optional[torch.Tensor] = None,
    dim: int = 64,
    init_std: float = 0.1,
) -> nn.Module:
    check_sizes("bpr_mf", num_users, num_items, dim)
    return MF(num_users, num_items, dim, init_std)
