"""`package.module:callable` targets of `model: {import: ...}`, resolved with one clear line
for each way they can be wrong."""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any, Callable

TARGET = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def resolve_callable(target: str) -> Callable[..., Any]:
    """The callable named by `target`; ValueError saying what is wrong (format, module,
    attribute, not callable)."""
    if not TARGET.fullmatch(target or ""):
        raise ValueError(f"import target {target!r} must look like 'package.module:callable' (e.g. 'mypkg.nets:build_net')")
    module_name, attr = target.split(":", 1)
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"cannot import module '{module_name}' of {target!r}: {e}; is it installed or on PYTHONPATH?") from None
    except Exception as e:  # the user's module raised while importing
        raise ValueError(f"importing module '{module_name}' of {target!r} failed: {type(e).__name__}: {e}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"module '{module_name}' has no attribute '{attr}' (from {target!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{target!r} is a {type(obj).__name__}, not a callable that builds an nn.Module")
    return obj


def accepted_kwargs(fn: Callable) -> tuple[set[str], bool]:
    """(keyword names `fn` takes, whether it also takes **kwargs); (empty, True) when its
    signature cannot be read (a builtin)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return set(), True
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names, any(p.kind == p.VAR_KEYWORD for p in params)
