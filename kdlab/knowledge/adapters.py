"""Models as users bring them: how a batch goes in and which tensor is the logits.

Done where tasks call the model (not by wrapping it in another module), so module paths for
feature methods, state-dict keys of saved weights and `save_pretrained` stay the model's own.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from kdlab.errors import KdlabError
from kdlab.knowledge.outputs import Outputs


def call_model(model: nn.Module, x: Tensor, attention_mask: Tensor | None = None):
    """`model(x)`, or for a Hugging Face model `model(<its main input>=x, attention_mask=...)`:
    `input_ids` for text, `pixel_values` for images."""
    base = getattr(model, "module", model)  # DDP wraps the model in `.module`
    name = getattr(base, "main_input_name", None)
    if not isinstance(name, str):
        return model(x)
    kwargs = {name: x}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    return model(**kwargs)


def logits_of(out, model: nn.Module | None = None):
    """The logits in what a model returned: a tensor as is, `.logits` of a Hugging Face
    `ModelOutput`, `out['logits']` of a dict, the first item of a tuple. Task results that
    are not logits (kdlab's `Outputs`) pass through."""
    if isinstance(out, (Tensor, Outputs)) or out is None:
        return out
    if isinstance(out, Mapping):  # ModelOutput is a Mapping with a `logits` key when it has logits
        if isinstance(out.get("logits"), Tensor):
            return out["logits"]
    elif isinstance(getattr(out, "logits", None), Tensor):
        return out.logits
    elif isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    who = type(getattr(model, "module", model)).__name__ if model is not None else "the model"
    keys = f" with keys {', '.join(map(str, out))}" if isinstance(out, Mapping) else ""
    raise KdlabError(
        f"{who} returned a {type(out).__name__}{keys}, not logits: return a tensor, a tuple whose first item "
        "is the logits, a dict with 'logits', or an object with a .logits tensor"
    )


def first_tensor(out):
    """A hooked module's output as one tensor: tuples give their first item, Hugging Face
    `ModelOutput`s and dicts their first tensor (e.g. `last_hidden_state`)."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, Mapping):
        out = [v for v in out.values() if isinstance(v, Tensor)]
    if isinstance(out, (tuple, list)) and out:
        return first_tensor(out[0])
    return out
