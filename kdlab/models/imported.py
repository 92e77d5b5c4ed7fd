"""Models from `model: {import: 'package.module:callable', params: {...}}`: any nn.Module a
user's code or an installed library (timm, torchvision, ...) builds. kdlab depends on none of
those libraries; the user's environment provides them."""

from __future__ import annotations

from typing import Any

from torch import nn

from kdlab.config.imports import accepted_kwargs, resolve_callable
from kdlab.errors import KdlabError


def build_imported(target: str, params: dict[str, Any], offered: dict[str, Any]) -> nn.Module:
    """Call the target with `params`, plus those of `offered` (num_classes, input_shape, the
    data's model arguments) that it names as parameters and `params` does not set."""
    try:
        fn = resolve_callable(target)
    except ValueError as e:
        raise KdlabError(str(e)) from None
    names, _ = accepted_kwargs(fn)
    kwargs = {k: v for k, v in offered.items() if k in names and k not in params}
    try:
        model = fn(**kwargs, **params)
    except Exception as e:  # the user's builder refused its arguments
        shown = ", ".join(f"{k}={v!r}" for k, v in {**kwargs, **params}.items()) or "no arguments"
        raise KdlabError(f"'{target}' failed when called with {shown}: {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise KdlabError(f"'{target}' returned an object of type {type(model).__name__}, not a torch nn.Module; point import at a "
                         "callable (a class or function) that builds the model")
    return model

