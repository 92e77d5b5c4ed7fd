"""torch.distributed (DDP) helpers. Under `torchrun` the environment says rank and world size;
otherwise everything here is a no-op and the run is single-process."""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


_ENV: DistEnv | None = None


def init_distributed(device_kind: str) -> DistEnv:
    """Join the process group if launched by torchrun (gloo on CPU, nccl on CUDA)."""
    global _ENV
    if _ENV is not None:
        return _ENV
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        _ENV = DistEnv()
        return _ENV
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device_kind == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    if device_kind == "cuda":
        torch.cuda.set_device(local)
    _ENV = DistEnv(rank, world, local)
    return _ENV


def current() -> DistEnv:
    return _ENV or DistEnv()


def barrier() -> None:
    if current().active:
        dist.barrier()


def all_reduce_sums(sums: dict[str, torch.Tensor]) -> dict[str, float]:
    """Sum a dict of scalar tensors over ranks (one collective) and return floats."""
    keys = sorted(sums)
    if not keys:
        return {}
    flat = torch.stack([sums[k].detach().double().reshape(()) for k in keys])
    if current().active:
        flat = flat.to(_collective_device(flat))
        dist.all_reduce(flat)
    return {k: float(v) for k, v in zip(keys, flat.cpu().tolist())}


def broadcast_object(obj):
    if not current().active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _collective_device(t: torch.Tensor) -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shutdown() -> None:
    global _ENV
    if dist.is_initialized():
        # DDP reducers still referencing the group (a trainer and its curriculum refer to each
        # other, so only the collector frees them) must go before the group is destroyed.
        gc.collect()
        # Leave together: a rank that tears gloo down while another still talks to it aborts.
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()
    _ENV = None
