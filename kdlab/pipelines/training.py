"""One training stage: create (or resume) a run in the store, train, record the outcome.

Every pipeline calls `train_stage`; it is the only place that turns a spec into a Trainer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import nn

from kdlab.config.schema import MethodSpec, ModelSpec, TrainSpec
from kdlab.data.base import DataBundle
from kdlab.engine import distributed as D
from kdlab.engine.seeding import seed_everything
from kdlab.errors import KdlabError
from kdlab.engine.trainer import NonFiniteLoss, Trainer, TrainResult
from kdlab.pipelines.building import arch_record, build_methods, build_model, method_context
from kdlab.pipelines.context import RunContext
from kdlab.tasks.base import Task
from kdlab.tracking.base import attach_sinks  # tracking (issue 14)


class RunStopped(Exception):
    """A run stopped on purpose (`--stop-after-epoch`); `--resume` continues it."""

    def __init__(self, epoch: int, run_id: Optional[str]):
        super().__init__(f"stopped after epoch {epoch + 1} as asked ({run_id}); run again with --resume to continue")
        self.epoch, self.run_id = epoch, run_id


@dataclass
class StageResult:
    result: TrainResult
    run_id: Optional[str]
    run_path: Optional[str]

    @property
    def summary(self) -> dict:
        return self.result.summary

    @property
    def model(self) -> nn.Module:
        return self.result.student


def open_run(ctx: RunContext, *, name: str, kind: str, grp: str, seed: int, config: dict,
             key: Optional[str] = None, variant: Optional[str] = None):
    """With --resume, the interrupted run of this config and seed and its last checkpoint;
    otherwise a new run. Returns (run, path to resume from or None). Main rank only."""
    found = ctx.store.find_resumable(grp, seed, kind, variant) if ctx.resume else None
    if found is not None:
        ctx.store.set_status(found.id, "running")
        ctx.log(f"resuming {found.id} from its last checkpoint")
        return attach_sinks(found, config, kind), str(found.ckpt("last"))  # tracking (issue 14): + attach_sinks
    run = ctx.store.create(name=name, kind=kind, grp=grp, seed=seed, config=config, key=key, variant=variant)
    return attach_sinks(run, config, kind), None  # tracking (issue 14): + attach_sinks


def train_stage(
    ctx: RunContext,
    *,
    name: str,
    kind: str,
    model_spec: ModelSpec,
    method_specs: list[MethodSpec],
    teachers: list[nn.Module],
    data: DataBundle,
    task: Task,
    train: TrainSpec,
    batch_size: int,
    eval_batch_size: int,
    seed: int,
    grp: str,
    config: dict,
    key: Optional[str] = None,
    variant: Optional[str] = None,
    label: Optional[str] = None,
    model: Optional[nn.Module] = None,
    arch: Optional[dict] = None,
) -> StageResult:
    """Train `model` (built from `model_spec` when not given) with the given methods."""
    env = D.current()
    seed_everything(seed)  # model initialisation is part of what the seed fixes
    model = model if model is not None else build_model(model_spec, data)
    methods, weights = build_methods(
        method_specs, method_context(data, model, teachers, train.epochs, ctx.device, task)
    )
    for m in methods:
        limit = m.needs().max_teachers
        if getattr(m, "uses_teacher", True) and limit is not None and len(teachers) > limit:
            raise KdlabError(
                f"method '{m.name}' reads {limit} teacher(s) but {len(teachers)} are configured: use a multi-teacher"
                " method (avg, ca_mkd, aekd) or give a single `teacher`"
            )
    run, resume_from = None, None
    if ctx.store is not None:
        if env.main:
            run, resume_from = open_run(ctx, name=name, kind=kind, grp=grp, seed=seed, config=config, key=key,
                                        variant=variant)
        resume_from = D.broadcast_object(resume_from)
    trainer = Trainer(
        student=model,
        methods=methods,
        weights=weights,
        teachers=teachers,
        data=data,
        task=task,
        train=train,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        seed=seed,
        device=ctx.device,
        run=run,
        arch=arch or arch_record(model_spec, data),
        progress=ctx.reporter if env.main else None,
        label=label or f"{kind} {variant or ''} seed {seed}".replace("  ", " "),
    )
    try:
        result = trainer.fit(resume_from=resume_from, stop_after_epoch=ctx.stop_after_epoch)
    except (KeyboardInterrupt, NonFiniteLoss) as e:
        if run is not None:
            run.finish("interrupted" if isinstance(e, KeyboardInterrupt) else "failed")
        raise
    except BaseException:
        if run is not None:
            run.finish("failed")
        raise
    interrupted = "interrupted_after_epoch" in result.summary
    if run is not None:
        run.finish("interrupted" if interrupted else "done", {**result.summary, "run_id": run.id, "seed": seed})
    # Every rank must see the same run (rank 0 made it), or ranks take different paths after this.
    run_id, run_path = D.broadcast_object((run.id, str(run.path)) if run is not None else (None, None))
    D.barrier()
    if interrupted:
        raise RunStopped(result.summary["interrupted_after_epoch"], run_id)
    return StageResult(result, run_id, run_path)
