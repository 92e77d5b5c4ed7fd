"""The study loop: ask Optuna for a trial, run its seeds through the normal pipeline, tell.

Storage is SQLite in the run store (`<store>/tune/<study>.db`). A trial killed part-way
stays RUNNING there; `--resume` closes it as failed and queues its parameters again under
the same run name, so its finished seeds are read from the store and its interrupted run
continues from its last checkpoint. Finished trials are never repeated.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Optional

from kdlab.config.load import validate
from kdlab.errors import KdlabError
from kdlab.store.runstore import RunStore
from kdlab.tracking.base import Sink, extra_sinks
from kdlab.tune.plan import Plan, mean, suggest


def study_path(store: RunStore, study: str) -> Path:
    return store.root / "tune" / f"{study}.db"


class PruneReporter(Sink):
    """Reports a student run's per-epoch metric to its trial and stops a hopeless trial."""

    def __init__(self, trial, plan: Plan, run, seed_index: int, maximize: bool):
        self.trial, self.plan, self.run = trial, plan, run
        self.offset = seed_index * plan.epochs  # one step axis across the trial's seeds
        self.pick = max if maximize else min
        self.best: Optional[float] = None
        for record in run.metrics():  # a resumed run: its earlier epochs count towards the best
            self._value(record)

    def _value(self, record: dict) -> Optional[float]:
        v = record.get(self.plan.epoch_key)
        if v is None:
            return None
        if self.plan.metric.startswith("best_"):
            self.best = v if self.best is None else self.pick(self.best, v)
            return self.best
        return v

    def log_metrics(self, record: dict) -> None:
        import optuna

        value = self._value(record)
        if value is None:
            return
        self.trial.report(value, self.offset + int(record["epoch"]) + 1)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {int(record['epoch']) + 1}")


def open_study(plan: Plan, store: RunStore, resume: bool):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = study_path(store, plan.study)
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{path.resolve()}"
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=plan.spec.startup_trials,
                                          n_warmup_steps=plan.spec.prune_after_epochs)
              if plan.spec.pruner == "median" else optuna.pruners.NopPruner())
    sampler = optuna.samplers.TPESampler(seed=plan.spec.sampler_seed)
    exists = path.exists() and plan.study in optuna.get_all_study_names(storage)
    study = optuna.create_study(storage=storage, study_name=plan.study, direction=plan.direction,
                                sampler=sampler, pruner=pruner, load_if_exists=True)
    if exists and study.direction.name.lower() != plan.direction:
        raise KdlabError(f"study '{plan.study}' in {path} was made to {study.direction.name.lower()}; "
                         f"this config asks to {plan.direction}: give tune.study another name")
    if exists and study.trials and not resume:
        raise KdlabError(f"study '{plan.study}' already has {len(study.trials)} trial(s) in {path}: "
                         "add --resume to continue it, or delete that file to start over")
    requeue_interrupted(study, plan)
    return study


def run_name(plan: Plan, trial) -> str:
    return trial.user_attrs.get("runs_as") or f"{plan.study}-t{trial.number:03d}"


def requeue_interrupted(study, plan: Plan) -> None:
    """Trials left RUNNING by a kill (one tune process per study): fail them, queue them again."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"runs_as": run_name(plan, t), "continues": t.number},
                            skip_if_exists=False)


def ended(study) -> int:
    """Trials that ran to an end, a re-queued trial counted once (under its latest attempt)."""
    from optuna.trial import TrialState

    latest = {}
    for t in study.get_trials(deepcopy=False):
        latest[t.user_attrs.get("runs_as", t.number)] = t
    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) for t in latest.values())


def run_trial(study, trial, plan: Plan, store: RunStore, progress: bool) -> str:
    """Run (or finish) one trial's seeds and tell Optuna its outcome. Returns a one-line account."""
    import optuna
    from optuna.trial import TrialState

    from kdlab.stages.runner import run_experiment

    name = run_name(plan, trial)
    trial.set_user_attr("runs_as", name)
    values = {path: suggest(trial, path, rng) for path, rng in plan.spec.params.items()}
    shown = ", ".join(f"{p}={v:.4g}" if isinstance(v, float) else f"{p}={v}" for p, v in values.items())
    exp = validate(plan.config(name, values), f"trial {trial.number}")
    reporters: list[PruneReporter] = []

    def reporter(run, config, kind) -> Optional[Sink]:
        if kind != "student":
            return None
        r = PruneReporter(trial, plan, run, plan.seeds.index(config["seed"]), plan.direction == "maximize")
        reporters.append(r)
        return r

    try:
        # With resume, seeds that already finished (before a kill) are restored, not retrained.
        with extra_sinks(reporter), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            result = run_experiment(exp, store=str(store.root), resume=True, progress=progress)
        done = {s["seed"]: s for s in result.results["main"]}
    except optuna.TrialPruned as e:
        if reporters:
            store.set_status(reporters[-1].run.id, "pruned")
        study.tell(trial, state=TrialState.PRUNED)
        return f"trial {trial.number} ({shown}): {e}"
    except KdlabError as e:  # e.g. a diverging learning rate: this trial fails, the study goes on
        trial.set_user_attr("error", str(e).splitlines()[0])
        study.tell(trial, state=TrialState.FAIL)
        return f"trial {trial.number} ({shown}): failed: {str(e).splitlines()[0]}"
    summaries = [done[s] for s in plan.seeds]
    scores = [float(s[plan.metric]) for s in summaries]
    trial.set_user_attr("values", scores)
    trial.set_user_attr("test", [s.get(plan.test_key) for s in summaries])
    trial.set_user_attr("run_ids", [s.get("run_id") for s in summaries])
    study.tell(trial, mean(scores))
    return f"trial {trial.number} ({shown}): {plan.metric} {mean(scores):.2f} over {len(scores)} seed(s)"


def run_study(plan: Plan, store: RunStore, n_trials: int, resume: bool, progress: bool,
              say: Callable[[str], None] = print):
    study = open_study(plan, store, resume)
    while ended(study) < n_trials:
        trial = study.ask()
        say(run_trial(study, trial, plan, store, progress))
    return study
