"""Top-K recommendation from implicit feedback, evaluated by full ranking over every item the
user has not seen in training (and, for test, not in validation either)."""

from __future__ import annotations

from torch import Tensor, nn

from kdlab.errors import KdlabError
from kdlab.knowledge.outputs import Outputs
from kdlab.registry import TASKS
from kdlab.tasks.base import Task
from kdlab.tasks.ranking_ops import Tables, TrainCSR, mask_items, padded_pairs, ranking_sums, unseen_scores


def model_tables(model: nn.Module) -> Tables:
    if not hasattr(model, "tables"):
        raise KdlabError(
            f"model {type(model).__name__} is not a ranking model; use a recommender backbone (bpr_mf, lightgcn) for ranking data"
        )
    users, items = model.tables()
    return Tables(users, items)


@TASKS.register("ranking", "top-K recommendation: full ranking over unseen items, Recall@10/20 and NDCG@10/20")
class Ranking(Task):
    """forward -> Outputs with `features` user (B, d) and item (B, d) rows of the batch and
    `extras["tables"]` (the full tables, for methods that score other items)."""

    name = "ranking"
    primary_metric = "ndcg20"
    default_method = "bpr"

    def forward(self, model: nn.Module, batch: dict[str, Tensor]) -> Outputs:
        t = model_tables(model)
        feats = {"user": t.users[batch["x"]]}
        if "item" in batch:
            feats["item"] = t.items[batch["item"]]
        return Outputs(logits=None, features=feats, extras={"tables": t})

    def eval_batch(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        users = batch["x"]
        t = model_tables(model)
        scores = unseen_scores(t, users, TrainCSR.of(self.data, users.device))
        if batch["seen"].numel():
            mask_items(scores, *padded_pairs(batch["seen"]))
        return ranking_sums(scores, batch["pos"])

    def finalize(self, sums: dict[str, float]) -> dict[str, float]:
        n = max(float(sums["n"]), 1.0)
        return {k: float(v) / n for k, v in sums.items() if k != "n"}


__all__ = ["Ranking", "model_tables"]
