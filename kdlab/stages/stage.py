"""One training stage: a small description (`Stage`) and `run_stage`, the one place that
opens a run in the store (or resumes one), trains it through the engine, and records how it
ended. Every recipe's training goes through here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from torch import nn

from kdlab.config.schema import DataSpec, Experiment, MethodSpec, ModelSpec, TrainSpec, stable_hash
from kdlab.data.base import DataBundle
from kdlab.engine import distributed as D
from kdlab.engine.checkpoint import save_atomic
from kdlab.engine.curriculum import Curriculum
from kdlab.engine.trainer import Trainer, TrainResult, TrainSetup
from kdlab.errors import KdlabError
from kdlab.models.build import arch_record, build_model
from kdlab.models.init_from_teacher import init_from_teacher
from kdlab.models.weights import save_student
from kdlab.seeding import seed_everything
from kdlab.stages.building import build_methods, method_context
from kdlab.stages.context import RunContext
from kdlab.stages.teacher_cache import obtain_caches
from kdlab.store.runstore import Run
from kdlab.tasks.base import Task
from kdlab.tracking.base import attach_sinks


class RunStopped(Exception):
    """A run stopped on purpose (`--stop-after-epoch`); `--resume` continues it."""

    def __init__(self, epoch: int, run_id: Optional[str]):
        super().__init__(f"stopped after epoch {epoch + 1} as asked ({run_id}); run again with --resume to continue")
        self.epoch, self.run_id = epoch, run_id


@dataclass
class Stage:
    """One ordinary training run of a recipe."""

    name: str
    kind: str  # teacher | student | assistant
    model: Optional[ModelSpec]  # None: `module` is given as it is (the Python API)
    methods: list[MethodSpec]
    seed: int
    data: DataBundle
    task: Task
    data_spec: DataSpec  # batch sizes (and what the run records about its data)
    train: TrainSpec
    config: dict  # recorded with the run; without its seed it groups runs for mean ± std
    teachers: list[nn.Module] = field(default_factory=list)
    variant: Optional[str] = None
    key: Optional[str] = None  # identity of a reusable artefact (a teacher)
    label: Optional[str] = None
    module: Optional[nn.Module] = None  # a model already built (else built from `model`)
    curriculum: Optional[Curriculum] = None
    # Per teacher, a CacheSpec (answer it from its output cache) or None (run it each step).
    teacher_cache: list = field(default_factory=list)

    @property
    def group(self) -> str:
        if self.key is not None:
            return self.key
        return stable_hash({k: v for k, v in self.config.items() if k not in ("seed", "seeds", "device")})

    @property
    def display(self) -> str:
        return self.label or f"{self.kind} {self.variant or ''} seed {self.seed}".replace("  ", " ")


def student_stage(exp: Experiment, data: DataBundle, task: Task, *, methods: list[MethodSpec], seed: int,
                  variant: Optional[str], teachers: list[nn.Module] = (), record: Optional[dict] = None,
                  **fields) -> Stage:
    """A stage of the experiment's student (data, model and budget from the experiment).
    `record` adds what distinguishes this stage to its recorded config; `fields` set any other
    Stage field (model, name, kind, label, curriculum)."""
    config = {**exp.model_dump(mode="json", exclude={"variants"}), "methods": [m.model_dump(mode="json") for m in methods],
              "seed": seed, "variant": variant, **(record or {})}
    if "model" in fields:
        config["student"] = fields["model"].model_dump(mode="json")
    base = dict(name=exp.name, kind="student", model=exp.student, methods=methods, seed=seed, data=data, task=task,
                data_spec=exp.data, train=exp.train, config=config, teachers=list(teachers), variant=variant)
    return Stage(**{**base, **fields})


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

    def row(self) -> dict:
        """The summary as one row of a recipe's result table."""
        return {**self.summary, "run_id": self.run_id, "seed": self.summary.get("seed")}

    def best_checkpoint(self) -> Optional[str]:
        return str(Path(self.run_path) / "checkpoints" / "best.pt") if self.run_path else None


class StoreRecorder:
    """The trainer's epochs and checkpoints, written into a run of the store."""

    def __init__(self, run: Run):
        self.run = run

    def log(self, record: dict) -> None:
        self.run.log_metrics(record)

    def rewrite(self, history: list[dict]) -> None:
        self.run.rewrite_metrics(history)

    def save(self, name: str, obj: dict) -> None:
        save_atomic(obj, self.run.ckpt(name))

    def where(self, name: str) -> str:
        return str(self.run.ckpt(name))


def _check_teachers(methods, teachers) -> None:
    for m in methods:
        limit = m.needs().max_teachers
        if getattr(m, "uses_teacher", True) and limit is not None and len(teachers) > limit:
            raise KdlabError(
                f"method '{m.name}' reads {limit} teacher(s) but {len(teachers)} are configured: use a multi-teacher"
                " method (avg, ca_mkd, aekd) or give a single `teacher`"
            )


def init_from_stage_teacher(model: nn.Module, stage: Stage) -> str:
    if len(stage.teachers) != 1:
        raise KdlabError(f"{stage.display}: init_from_teacher needs one teacher, this stage has {len(stage.teachers)}")
    return init_from_teacher(model, stage.teachers[0], stage.model.init_from_teacher.layers)


def _open_run(ctx: RunContext, stage: Stage) -> tuple[Optional[Run], Optional[str], bool]:
    """(run, checkpoint to continue from, finished). With --resume: a finished run of this
    stage is restored, not retrained; an interrupted one (killed at any moment) is continued
    in place; otherwise a new run. Main rank only."""
    store, grp = ctx.store, stage.group
    if ctx.resume:
        done = store.find_finished(grp, stage.seed, stage.kind, stage.variant)
        if done is not None:
            ctx.log(f"{stage.display}: already finished in {done.id}; nothing to train")
            return done, str(done.ckpt("last")), True
        found = store.find_resumable(grp, stage.seed, stage.kind, stage.variant)
        if found is not None:
            found.hold()
            store.set_status(found.id, "running")
            last = found.ckpt("last")
            ctx.log(f"resuming {found.id} " + ("from its last checkpoint" if last.exists() else "from the start"))
            return attach_sinks(found, stage.config, stage.kind), (str(last) if last.exists() else None), False
    run = store.create(name=stage.name, kind=stage.kind, grp=grp, seed=stage.seed, config=stage.config,
                       key=stage.key, variant=stage.variant, metric=stage.task.primary_metric)
    return attach_sinks(run, stage.config, stage.kind), None, False


def run_stage(ctx: RunContext, stage: Stage) -> StageResult:
    """Train the stage's model with its methods (or restore it, if it already finished)."""
    env = D.current()
    seed_everything(stage.seed)  # model initialisation is part of what the seed fixes
    model = stage.module if stage.module is not None else build_model(stage.model, stage.data, stage.kind)
    if stage.model is not None and stage.model.init_from_teacher is not None:
        ctx.log(init_from_stage_teacher(model, stage))
    methods, weights = build_methods(
        stage.methods, method_context(stage.data, model, stage.teachers, stage.train.epochs, ctx.device, stage.task)
    )
    _check_teachers(methods, stage.teachers)
    caches, views = obtain_caches(ctx, stage, methods)
    run, resume_from, finished = None, None, False
    if ctx.store is not None:
        if env.main:
            run, resume_from, finished = _open_run(ctx, stage)
        resume_from, finished = D.broadcast_object((resume_from, finished))
    setup = TrainSetup(
        student=model, data=stage.data, task=stage.task, train=stage.train, seed=stage.seed, device=ctx.device,
        batch_size=stage.data_spec.batch_size, eval_batch_size=stage.data_spec.eval_batch_size, methods=methods,
        weights=weights, teachers=stage.teachers, label=stage.display, arch=arch_record(stage.model, stage.data, model),
        teacher_caches=caches, views=views,
    )
    recorder = StoreRecorder(run) if run is not None and not finished else None
    trainer = Trainer(setup, stage.curriculum, recorder, progress=ctx.reporter if env.main and not finished else None)
    try:
        result = trainer.fit(resume_from=resume_from, stop_after_epoch=None if finished else ctx.stop_after_epoch)
    except BaseException as e:
        if run is not None and not finished:
            run.finish("interrupted" if isinstance(e, (KeyboardInterrupt, SystemExit)) else "failed")
        raise
    result.summary["seed"] = stage.seed
    if run is not None and not finished:
        if result.finished:  # the distilled student as trained, in formats other tools read
            save_student(result.student, run.path)
        status = "done" if result.finished else "interrupted"
        run.finish(status, {**result.summary, "run_id": run.id}, metric_value=_primary(result, stage.task))
    # Every rank must see the same run (rank 0 made it), or ranks take different paths after this.
    run_id, run_path = D.broadcast_object((run.id, str(run.path)) if run is not None else (None, None))
    D.barrier()
    if not result.finished:
        raise RunStopped(result.summary["interrupted_after_epoch"], run_id)
    return StageResult(result, run_id, run_path)


def _primary(result: TrainResult, task: Task) -> Optional[float]:
    """The run's primary metric for `kdlab runs`: test score at the best-validation epoch."""
    m = task.primary_metric
    s = result.summary
    return s.get(f"best_test_{m}", s.get(f"test_{m}"))
