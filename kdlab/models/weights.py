"""Model weights in and out: kdlab checkpoints, plain state dicts, `.safetensors` files and
Hugging Face folders are read into a built model (strictly, with one clear line when they do
not fit); a finished student is written as `model.safetensors` (and as a Hugging Face folder
when it is one)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdlab.errors import KdlabError

FORMAT = "kdlab-checkpoint-1"
SAFETENSORS = "model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise KdlabError(f"checkpoint '{path}' does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, random bytes, or a pickle of arbitrary objects
        raise KdlabError(
            f"checkpoint '{path}' cannot be read (truncated, corrupt, or not a tensors-only file): {_reason(e)}"
        ) from None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return obj
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"format": "state_dict", "model": obj}  # a plain state dict saved by the user
    raise KdlabError(f"checkpoint '{path}' is neither a kdlab checkpoint nor a state dict of tensors")


def _reason(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:160] if text else type(e).__name__


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise KdlabError(f"weights file '{path}' does not exist")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise KdlabError(f"'{path}' is not a readable .safetensors file (truncated or corrupt?): {_reason(e)}") from None


def hf_weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a Hugging Face folder (one file, or the shards its index names)."""
    if (folder / SAFETENSORS).is_file():
        return [folder / SAFETENSORS]
    index = folder / SHARD_INDEX
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError) as e:
            raise KdlabError(f"'{index}' is not a safetensors shard index: {_reason(e)}") from None
        return [folder / s for s in shards]
    return sorted(folder.glob("*.safetensors"))


def read_hf_folder(folder: str | Path) -> dict[str, torch.Tensor]:
    folder = Path(folder)
    files = hf_weight_files(folder)
    if not files:
        raise KdlabError(f"folder '{folder}' holds no .safetensors weights (a Hugging Face folder needs "
                         f"{SAFETENSORS} beside config.json)")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(read_safetensors(f))
    return state


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The model weights in a Hugging Face folder, a `.safetensors` file, a kdlab checkpoint
    or a plain state dict."""
    p = Path(path).expanduser()
    if p.is_dir():
        return read_hf_folder(p)
    if p.suffix == ".safetensors":
        return read_safetensors(p)
    return read_checkpoint(p)["model"]


def _fill_tied(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors a model shares between names (e.g. a language model's tied input and output
    embeddings) are stored once by safetensors and Hugging Face: give the other names too."""
    groups: dict[tuple, list[str]] = {}
    for k, v in model.state_dict(keep_vars=False).items():
        if v.numel():
            groups.setdefault((v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape)), []).append(k)
    out = dict(state)
    for names in groups.values():
        present = [n for n in names if n in out]
        if present:
            for n in names:
                out.setdefault(n, out[present[0]])
    return out


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path, role: str) -> None:
    """Load strictly; a different architecture gets one clear line instead of a wall of keys."""
    state = _fill_tied(model, state)
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


def load_weights(model: nn.Module, path: str | Path, role: str = "model") -> nn.Module:
    """Initialise `model` from a file or Hugging Face folder (see `read_state`)."""
    load_model_state(model, read_state(path), path, role)
    return model


def is_hf_model(model: nn.Module) -> bool:
    """A Hugging Face transformers model (duck-typed: transformers need not be imported)."""
    return callable(getattr(model, "save_pretrained", None)) and hasattr(model, "config")


def save_safetensors(model: nn.Module, path: str | Path) -> None:
    """Write atomically; tensors shared between names are stored once (see `_fill_tied`)."""
    from safetensors.torch import save_model

    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_model(model, tmp, metadata={"format": "pt", "saved_by": "kdlab"})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_student(model: nn.Module, folder: str | Path) -> list[Path]:
    """`model.safetensors` in `folder`, and `hf/` (from `save_pretrained`) for a Hugging Face
    model; returns the paths written."""
    folder = Path(folder)
    save_safetensors(model, folder / SAFETENSORS)
    written = [folder / SAFETENSORS]
    if is_hf_model(model):
        tmp = Path(tempfile.mkdtemp(dir=folder, prefix=".hf."))
        try:
            model.save_pretrained(tmp)
            if (folder / "hf").exists():
                shutil.rmtree(folder / "hf")
            os.replace(tmp, folder / "hf")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        written.append(folder / "hf")
    return written
