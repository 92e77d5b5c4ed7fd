"""What every pipeline needs to run: the store, the device, progress, resume settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from kdlab.engine import distributed as D
from kdlab.errors import KdlabError
from kdlab.report.progress import Reporter
from kdlab.store.runstore import RunStore


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        kind = requested
    if kind.startswith("cuda") and not torch.cuda.is_available():
        raise KdlabError(f"device '{requested}' was asked for but CUDA is not available here; use --device cpu")
    env = D.init_distributed("cuda" if kind.startswith("cuda") else "cpu")
    if kind == "cuda" and env.active:
        return torch.device("cuda", env.local_rank)
    return torch.device(kind)


@dataclass
class RunContext:
    store: Optional[RunStore]
    device: torch.device
    reporter: Reporter = field(default_factory=lambda: Reporter(enabled=False))
    resume: bool = False
    stop_after_epoch: Optional[int] = None

    @property
    def env(self) -> D.DistEnv:
        return D.current()

    def log(self, message: str) -> None:
        if self.env.main:
            self.reporter.log(message)
