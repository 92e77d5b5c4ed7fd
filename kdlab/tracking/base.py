"""The sink interface, the backend lookup, and where sinks are attached to a run.

A backend module in this package defines:
    require() -> None                       # raises KdlabError when its library is missing
    open_sink(run, config, spec) -> Sink    # spec: the config's `logging` section
Sinks only ever see the main rank: runs exist on rank 0 only (and `attach_sinks` checks).
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Callable, Iterator, Optional

from kdlab.engine import distributed as D
from kdlab.registry import TRACKERS

class Sink:
    """Receives each per-epoch record as the store writes it, then the run's outcome."""

    def log_metrics(self, record: dict) -> None:
        pass

    def finish(self, status: str, summary: Optional[dict]) -> None:
        pass


# A factory gets (run, config, kind) and returns a Sink or None (not for this run).
SinkFactory = Callable[..., Optional[Sink]]
_extra: ContextVar[tuple[SinkFactory, ...]] = ContextVar("kdlab_extra_sinks", default=())


@contextlib.contextmanager
def extra_sinks(*factories: SinkFactory) -> Iterator[None]:
    """Attach sinks made by `factories` to every run opened inside the block (e.g. a tuner's
    pruning reporter), after the configured backends."""
    token = _extra.set(_extra.get() + factories)
    try:
        yield
    finally:
        _extra.reset(token)


def attach_sinks(run, config: dict, kind: str):
    """Open the sinks the run's config asks for (`logging.backends`) and any extra ones. Returns run."""
    if run is None or not D.current().main:
        return run
    spec = config.get("logging") or {}
    for name in spec.get("backends") or []:
        run.attach(TRACKERS.get(name).obj(run, config, spec))
    for factory in _extra.get():
        sink = factory(run, config, kind)
        if sink is not None:
            run.attach(sink)
    return run


def scalars(record: dict) -> dict[str, float]:
    """The numeric entries of a record (bools and the epoch counter are not curves)."""
    return {k: float(v) for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"}
