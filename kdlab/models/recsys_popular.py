"""Most-popular: the non-personalised baseline of every ranking comparison. Each item scores its
number of training interactions, the same for every user, so a ranking model that does not beat
it has learnt nothing personal."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class MostPopular(nn.Module):
    """Rank-1 tables: users all ones, items their train counts, so score(u, i) = count(i) and the
    ranking task evaluates it exactly as a trained model (train items masked, same test protocol)."""

    def __init__(self, item_counts: Tensor, num_users: int):
        super().__init__()
        # Equal counts are ordered by item id (a fraction below 1 never crosses a count), so the
        # figure does not depend on how topk breaks ties.
        n = len(item_counts)
        tie_break = 0.5 * (1 - torch.arange(n, device=item_counts.device, dtype=torch.float64) / n)
        self.register_buffer("item_scores", (item_counts.double() + tie_break).float().reshape(-1, 1))
        self.register_buffer("user_ones", torch.ones(num_users, 1, device=item_counts.device))

    def tables(self) -> tuple[Tensor, Tensor]:
        return self.user_ones, self.item_scores


def most_popular(data) -> MostPopular:
    """From a ranking DataBundle: counts of the training interactions only."""
    return MostPopular(data.meta["item_popularity"], data.model_args["num_users"])
