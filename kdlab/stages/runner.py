"""Run a validated experiment with the pipeline it names."""

from __future__ import annotations

from typing import Any, Optional

from kdlab.config.schema import Experiment
from kdlab.engine import distributed as D
from kdlab.engine.fast_step import check_compile
from kdlab.errors import KdlabError
from kdlab.registry import PIPELINES
from kdlab.report.progress import Reporter
from kdlab.stages.context import RunContext, resolve_device
from kdlab.store.runstore import RunStore


def run_experiment(
    exp: Experiment,
    device: Optional[str] = None,
    store: Optional[str] = None,
    resume: bool = False,
    stop_after_epoch: Optional[int] = None,
    progress: bool = True,
) -> Any:
    name = exp.pipeline.name if exp.pipeline else "distill"
    entry = PIPELINES.get(name)
    if exp.variants and not entry.extra.get("variants", True):
        raise KdlabError(f"pipeline '{name}' compares its own fixed set of runs and does not read `variants`; "
                         "remove `variants` (or use `methods`)")
    dev = resolve_device(device or exp.device)
    if any(t.compile for t in (exp.train, *(s.train for s in exp.all_teachers() if s.train))):
        check_compile(dev)  # before anything trains, not at the first compiled step
    run_store = RunStore(store)
    with Reporter(enabled=progress and D.current().main) as reporter:
        ctx = RunContext(run_store, dev, reporter, resume, stop_after_epoch)
        return entry.obj(exp, ctx)
