"""Checkpoints: written atomically (temp file + rename), read with weights_only=True.

A checkpoint holds tensors and plain data only: the model state, the methods' state, the
optimiser state, the epoch, the history, and an `arch` record to check it against the model.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdlab.errors import KdlabError

FORMAT = "kdlab-checkpoint-1"


def save_atomic(obj: Any, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise KdlabError(f"checkpoint '{path}' does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, random bytes, or a pickle of arbitrary objects
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise KdlabError(
            f"checkpoint '{path}' cannot be read (truncated, corrupt, or not a tensors-only file): {reason}"
        ) from None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return obj
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"format": "state_dict", "model": obj}  # a plain state dict saved by the user
    raise KdlabError(f"checkpoint '{path}' is neither a kdlab checkpoint nor a state dict of tensors")


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path, role: str) -> None:
    """Load strictly; a different architecture gets one clear line instead of a wall of keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            k, got, want = shapes[0]
            parts.append(f"{k} has shape {list(got)} in the file but {list(want)} in the model")
            if k.endswith("weight") and len(got) == 2 and got[1] == want[1] and got[0] != want[0]:
                parts[-1] += f" (the checkpoint predicts {got[0]} classes, the model {want[0]})"
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise KdlabError(
            f"checkpoint '{path}' does not fit the {role} ({type(model).__name__}): {'; '.join(parts)}."
            " Is it a checkpoint of another architecture?"
        )
    model.load_state_dict(state)


def read_resumable(path: str | Path) -> dict[str, Any]:
    """A `last` checkpoint written by the trainer: everything needed to continue a run."""
    ck = read_checkpoint(path)
    missing = [k for k in ("module", "optimizer", "history", "epoch", "best_model") if k not in ck]
    if missing:
        raise KdlabError(
            f"checkpoint '{path}' cannot be resumed: it holds weights only (no {', '.join(missing)}); "
            "run without --resume to start afresh, or give it as a teacher's `checkpoint:`"
        )
    return ck
