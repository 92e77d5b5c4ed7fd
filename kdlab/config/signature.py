"""Validate keyword parameters of a registered builder against its signature."""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from kdlab.config.numbers import refuse_bools
from kdlab.errors import suggest

# Filled in by the engine (or by the data's `model_args`), never by the user.
RESERVED = ("num_classes", "input_shape", "seed", "num_users", "num_items", "vocab_size", "adjacency", "stream")


@lru_cache(maxsize=None)
def params_model(fn: Callable) -> type[BaseModel]:
    fields = {}
    # eval_str: string annotations (`from __future__ import annotations`) resolved in fn's module
    for name, p in inspect.signature(fn, eval_str=True).parameters.items():
        if name in RESERVED or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        ann = Any if p.annotation is inspect.Parameter.empty else p.annotation
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[name] = (ann, default)
    return create_model(f"{fn.__name__}_params", __config__=ConfigDict(extra="forbid"), **fields)


def validate_params(fn: Callable, params: dict[str, Any], what: str) -> dict[str, Any]:
    """Return the params with types coerced; raise ValueError naming the bad key."""
    model = params_model(fn)
    refuse_bools(model, params, what + " parameter")
    try:
        return model(**params).model_dump()
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            known = list(model.model_fields)
            raise ValueError(
                f"{what} has no parameter '{key}'.{suggest(key, known)} Known: {', '.join(known) or 'none'}"
            ) from None
        raise ValueError(f"{what} parameter '{key}': {err['msg']} (got {err.get('input')!r})") from None
