"""Run a validated experiment with the pipeline it names, and print its result."""

from __future__ import annotations

from typing import Any, Optional

from kdlab.config.schema import Experiment
from kdlab.pipelines.context import RunContext, resolve_device
from kdlab.registry import PIPELINES
from kdlab.report.progress import Reporter
from kdlab.store.runstore import RunStore


def run_experiment(
    exp: Experiment,
    device: Optional[str] = None,
    store: Optional[str] = None,
    resume: bool = False,
    stop_after_epoch: Optional[int] = None,
    progress: bool = True,
) -> Any:
    dev = resolve_device(device or exp.device)
    from kdlab.engine import distributed as D

    run_store = RunStore(store)
    with Reporter(enabled=progress and D.current().main) as reporter:
        ctx = RunContext(run_store, dev, reporter, resume, stop_after_epoch)
        name = exp.pipeline.name if exp.pipeline else "distill"
        return PIPELINES.get(name).obj(exp, ctx)


def print_result(result: Any) -> None:
    """Pipelines return objects that know how to show themselves, or an ExperimentResult."""
    from kdlab.cli.common import main_print
    from kdlab.pipelines.distill import ExperimentResult
    from kdlab.report.tables import comparison_rows, rich_table

    if hasattr(result, "render"):
        main_print(result.render())
        return
    if isinstance(result, ExperimentResult):
        for i, t in enumerate(result.teachers):
            main_print(f"teacher {i}: {t['params']:,} params, test {result.metric} "
                       f"{t.get('test_' + result.metric, float('nan')):.2f} (the weights distilled "
                       "from: best-val epoch or given checkpoint)")
        header, rows = comparison_rows(result.results, result.metric, result.baseline)
        main_print(rich_table(header, rows, title=result.name))
