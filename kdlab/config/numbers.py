"""Numbers that refuse booleans: pydantic reads `batch_size: true` as 1 and `tau: false` as 0.0,
which is never what the user meant. Integers are still accepted where a float is wanted."""

from __future__ import annotations

import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import AllowInfNan, BaseModel, BeforeValidator


def _no_bool(v: Any) -> Any:
    if isinstance(v, bool):
        raise ValueError(f"must be a number, not {str(v).lower()}")
    return v


Int = Annotated[int, BeforeValidator(_no_bool)]
Float = Annotated[float, BeforeValidator(_no_bool), AllowInfNan(False)]


def is_number_type(ann: Any) -> bool:
    """int, float, or an Optional/Annotated/Union of them without bool."""
    if ann in (int, float):
        return True
    origin, args = get_origin(ann), get_args(ann)
    if origin is Annotated:
        return is_number_type(args[0])
    if origin in (Union, types.UnionType):
        kinds = [a for a in args if a is not type(None)]
        return bool(kinds) and bool not in kinds and any(is_number_type(a) for a in kinds)
    return False


def refuse_bools(model: type[BaseModel], values: dict[str, Any], what: str) -> None:
    """ValueError for the first boolean given where the model's field wants a number."""
    for k, v in values.items():
        field = model.model_fields.get(k)
        if isinstance(v, bool) and field is not None and is_number_type(field.annotation):
            raise ValueError(f"{what} {k}: must be a number, not {str(v).lower()}")
