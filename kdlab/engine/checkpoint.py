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

from kdlab.errors import KdlabError

# Reading weights is the models layer's (it also reads safetensors and Hugging Face folders);
# re-exported here for the engine's callers.
from kdlab.models.weights import FORMAT, load_model_state, read_checkpoint  # noqa: F401


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
