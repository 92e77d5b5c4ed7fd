"""The curriculum of on-policy distillation (GKD, Agarwal et al. 2024, arXiv:2306.13649): with
probability λ a training batch's continuations are the student's own.

An on-policy batch keeps the first `prompt_len` tokens of each window and lets the student
continue them (no gradient through the generation, eval mode, key-value cache) to the
window's length: x = prompt + output[:-1], y = the next tokens, −100 where the next token is
still the prompt. The trainer then runs the teachers on this batch, so they score exactly the
student's tokens, and the experiment's methods (any token-level divergence) count the output
positions only. Batches that are not on-policy are the data's, unchanged: λ = 0 trains
exactly as the `distill` pipeline does.

Options: `schedule: imitkd` raises λ linearly from 0 to `lam` over `anneal_epochs` (ImitKD,
Lin et al. 2020, arXiv:2009.07253: the data's share of the prefixes decays over training);
`replay` keeps student outputs in a buffer and reuses them (DistiLLM's adaptive off-policy,
Ko et al. 2024, arXiv:2402.03898): an on-policy batch is generated afresh with probability φ
(`fresh_prob`, always while the buffer holds less than a batch), else drawn from the buffer;
φ rises by `raise_by` after every epoch whose validation loss is not below the best so far.

Every draw is seeded by (seed, epoch, step), and the buffer and φ are checkpointed with the
run, so a resumed run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from kdlab.engine.curriculum import Curriculum
from kdlab.models.decoding import DecodeSpec, continue_tokens
from kdlab.seeding import derive, generator

IGNORE = -100


class SampleDecodeSpec(DecodeSpec):
    strategy: Literal["greedy", "beam", "sample"] = "sample"

    @model_validator(mode="after")
    def _no_beam(self):
        if self.strategy == "beam":
            raise ValueError("on-policy distillation trains on the student's own outputs: decode.strategy sample "
                             "(GKD) or greedy, not beam")
        return self


class ReplaySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int = Field(1024, ge=1)  # sequences kept; the oldest are replaced
    fresh_prob: float = Field(0.5, ge=0, le=1)  # φ at the start
    raise_by: float = Field(0.1, ge=0, le=1)  # φ's rise after an epoch without a better validation loss


class OnPolicyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lam: float = Field(0.5, ge=0, le=1)  # probability that a batch is on-policy (its final value under imitkd)
    prompt_len: int = Field(8, ge=1)  # tokens of each window kept as the prompt
    schedule: Literal["constant", "imitkd"] = "constant"
    anneal_epochs: Optional[float] = Field(None, gt=0)  # imitkd: epochs until λ = lam (default: all)
    decode: SampleDecodeSpec = Field(default_factory=SampleDecodeSpec)
    replay: Optional[ReplaySpec] = None


def on_policy_batch(batch: dict[str, Tensor], prompt_len: int, outputs: Tensor) -> dict[str, Tensor]:
    """The batch with its windows' continuations replaced by `outputs` (B, T − prompt_len + 1)."""
    seq = torch.cat([batch["x"][:, :prompt_len], outputs.to(batch["x"].dtype)], dim=1)
    y = seq[:, 1:].clone()
    y[:, : prompt_len - 1] = IGNORE
    return {**batch, "x": seq[:, :-1], "y": y}


class OnPolicyCurriculum(Curriculum):
    def __init__(self, params: OnPolicyParams, epochs: int):
        self.p = params
        self.epochs = epochs
        self.fresh_prob = params.replay.fresh_prob if params.replay else 1.0
        self.best_val: Optional[float] = None
        self.buffer: Optional[dict[str, Tensor]] = None  # x, y: (size, T)
        self.filled = self.next = 0
        self.counts = {"data": 0, "generated": 0, "replayed": 0}

    def lam(self, t: float) -> float:
        """λ at fractional epoch t."""
        if self.p.schedule == "constant":
            return self.p.lam
        return self.p.lam * min(1.0, t / (self.p.anneal_epochs or self.epochs))

    def batches(self, epoch: int):
        self.counts = dict.fromkeys(self.counts, 0)
        return _OnPolicyEpoch(self, super().batches(epoch), epoch)

    def transform(self, batch: dict[str, Tensor], epoch: int, step: int, steps: int, coin: torch.Generator):
        u, v = torch.rand(2, generator=coin).tolist()  # host numbers from a CPU generator: no device sync
        if u >= self.lam(epoch + step / steps):
            self.counts["data"] += 1
            return batch
        n = len(batch["x"])
        if self.p.replay is not None and self.filled >= n and v >= self.fresh_prob:
            self.counts["replayed"] += 1
            idx = torch.randint(self.filled, (n,), generator=coin).to(self.buffer["x"].device)
            return {**batch, "x": self.buffer["x"][idx], "y": self.buffer["y"][idx]}
        self.counts["generated"] += 1
        setup, rank = self.trainer.setup, self.trainer.env.rank
        gen_len = batch["x"].shape[1] - self.p.prompt_len + 1
        outputs = continue_tokens(self.trainer.student, batch["x"][:, : self.p.prompt_len], gen_len, self.p.decode,
                                  seed=derive(setup.seed, epoch, step, rank))
        out = on_policy_batch(batch, self.p.prompt_len, outputs)
        if self.p.replay is not None:
            self._push(out)
        return out

    def _push(self, batch: dict[str, Tensor]) -> None:
        size = self.p.replay.size
        if self.buffer is None:
            self.buffer = {k: batch[k].new_zeros((size, batch[k].shape[1])) for k in ("x", "y")}
        for row in range(len(batch["x"])):  # a ring: the oldest rows are replaced
            for k in ("x", "y"):
                self.buffer[k][self.next] = batch[k][row]
            self.next = (self.next + 1) % size
            self.filled = min(self.filled + 1, size)

    def validate(self, epoch: int) -> dict[str, float]:
        val = super().validate(epoch)
        if self.p.replay is not None and "loss" in val:
            if self.best_val is None or val["loss"] < self.best_val:
                self.best_val = val["loss"]
            else:
                self.fresh_prob = min(1.0, self.fresh_prob + self.p.replay.raise_by)
        return val

    def epoch_fields(self, epoch: int) -> dict[str, Any]:
        return {"onpolicy_lam": self.lam(epoch + 1), "onpolicy_fresh_prob": self.fresh_prob,
                **{f"onpolicy_{k}_batches": v for k, v in self.counts.items()}}

    def state_dict(self) -> dict[str, Any]:
        return {"fresh_prob": self.fresh_prob, "best_val": self.best_val, "filled": self.filled, "next": self.next,
                "buffer": self.buffer}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.fresh_prob, self.best_val = state["fresh_prob"], state["best_val"]
        self.filled, self.next = state["filled"], state["next"]
        device = self.trainer.device
        self.buffer = None if state["buffer"] is None else {k: v.to(device) for k, v in state["buffer"].items()}


class _OnPolicyEpoch:
    """The epoch's data batches, each passed through the curriculum's coin."""

    def __init__(self, curriculum: OnPolicyCurriculum, loader, epoch: int):
        self.curriculum, self.loader, self.epoch = curriculum, loader, epoch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        coin = generator(derive(self.curriculum.trainer.setup.seed, self.epoch, 31))
        steps = len(self.loader)
        for step, batch in enumerate(self.loader):
            yield self.curriculum.transform(batch, self.epoch, step, steps, coin)
