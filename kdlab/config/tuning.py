"""The `logging:` and `tune:` sections of an experiment."""

from __future__ import annotations

import copy
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoggingSpec(_Strict):
    """Trackers that mirror each run's records (the run store stays the source of truth)."""

    backends: list[str] = Field(default_factory=list)  # tensorboard, mlflow (kdlab.tracking)
    mlflow_uri: Optional[str] = None  # default: sqlite:///<store>/mlflow.db
    mlflow_experiment: Optional[str] = None  # default: the config's name

    @field_validator("backends")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        from kdlab.errors import KdlabError
        from kdlab.registry import TRACKERS

        try:
            for n in v:
                if n not in TRACKERS:
                    raise ValueError(f"unknown logging backend '{n}' (known: {', '.join(TRACKERS.names())})")
                TRACKERS.get(n).extra["require"]()
        except KdlabError as e:  # not installed: pydantic needs ValueError to name the field
            raise ValueError(str(e)) from None
        return list(dict.fromkeys(v))


class ParamRange(_Strict):
    """`{low: 1, high: 10, log: true}` (int when both bounds are ints) or `{choices: [...]}`."""

    low: Optional[Union[int, float]] = None
    high: Optional[Union[int, float]] = None
    log: bool = False
    choices: Optional[list[Any]] = None

    @model_validator(mode="after")
    def _check(self):
        if self.choices is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give either choices or low/high, not both")
            if not self.choices:
                raise ValueError("choices is empty: list at least one value")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give low and high (or choices)")
        if self.low >= self.high:
            raise ValueError(f"empty range: low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0 (got {self.low})")
        return self

    @property
    def is_int(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int)

    def example(self) -> Any:
        return self.choices[0] if self.choices is not None else self.low


class TuneSpec(_Strict):
    """What `kdlab tune` searches: parameter paths (as in overrides) and their ranges."""

    params: dict[str, ParamRange] = Field(min_length=1)
    # A key of the run summary, chosen on validation (best_val_top1, val_top1, val_loss, ...).
    metric: Optional[str] = None  # default: best_val_<the task's primary metric>
    direction: Optional[Literal["maximize", "minimize"]] = None  # default: the metric's own
    seeds_per_trial: int = Field(1, ge=1)  # the first N of `seeds`
    pruner: Literal["median", "none"] = "median"
    prune_after_epochs: int = Field(2, ge=0)  # no trial is pruned before this many epochs
    startup_trials: int = Field(3, ge=0)  # trials finished before pruning starts
    sampler_seed: int = 0
    study: Optional[str] = None  # default: the config's name

    @field_validator("metric")
    @classmethod
    def _validation_metric(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and v.startswith(("test_", "best_test_")):
            raise ValueError(f"'{v}' is a test metric: select on validation (val_… or best_val_…); "
                             "the table reports test beside it")
        return v


def check_paths(base: dict, spec: TuneSpec) -> None:
    """Every `tune.params` path must name a field of the config `base` (resolved, without
    `tune`): set each to an example value and validate the result."""
    from kdlab.config.load import apply_overrides
    from kdlab.config.schema import Experiment

    for path, rng in spec.params.items():
        raw = copy.deepcopy(base)
        try:
            apply_overrides(raw, [(path.split("."), rng.example())])
            Experiment(**raw)
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(p) for p in err["loc"]) or "config"
            msg = err["msg"].removeprefix("Value error, ")
            raise ValueError(f"'{path}' is not a parameter of this config ({loc}: {msg})") from None
        except Exception as e:  # KdlabError from apply_overrides: a list index out of range
            raise ValueError(f"'{path}' is not a parameter of this config ({e})") from None
