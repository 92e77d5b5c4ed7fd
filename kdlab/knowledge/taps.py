"""Read intermediate features of unmodified models by module path, with forward hooks.

A layer is named by its module path (`layer3.1.conv2`, as in `model.named_modules()`) or
by `hint:i`, the model's i-th standard hint point (`hint:-1` is the deepest). Paths are
checked when the tap is made, so a typo fails before any training, naming close paths.
"""

from __future__ import annotations

import difflib

from torch import Tensor, nn

from kdlab.errors import KdlabError
from kdlab.knowledge.adapters import first_tensor


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DDP wraps the model in `.module`


def resolve_layer(model: nn.Module, layer: str, role: str = "model") -> str:
    """Turn `hint:i` into a module path and check that the path exists."""
    model = _unwrap(model)
    modules = dict(model.named_modules())
    if layer.startswith("hint:"):
        hints = list(getattr(model, "hint_points", []))
        try:
            i = int(layer.split(":", 1)[1])
            return hints[i]
        except (ValueError, IndexError):
            raise KdlabError(
                f"{role} has no hint point '{layer}': it has {len(hints)} ({', '.join(hints) or 'none'});"
                " use hint:0 … hint:-1 or a module path."
            ) from None
    if layer not in modules or layer == "":
        close = difflib.get_close_matches(layer, [m for m in modules if m], n=5, cutoff=0.4)
        hint = f" Close paths: {', '.join(close)}." if close else ""
        raise KdlabError(
            f"{role} ({type(model).__name__}) has no module '{layer}'.{hint}"
            f" `kdlab list layers MODEL` prints every path."
        )
    return layer


class FeatureTap:
    """Registers forward hooks on the given layers; `.features` holds the last outputs."""

    def __init__(self, model: nn.Module, layers: list[str], role: str = "model"):
        base = _unwrap(model)
        self.paths = {name: resolve_layer(base, name, role) for name in layers}
        self.features: dict[str, Tensor] = {}
        modules = dict(base.named_modules())
        self._handles = []
        for name, path in self.paths.items():
            self._handles.append(modules[path].register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def hook(_module, _inputs, output):
            self.features[name] = first_tensor(output)  # a layer's tuple or ModelOutput: its first tensor

        return hook

    def pop(self) -> dict[str, Tensor]:
        out, self.features = self.features, {}
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
