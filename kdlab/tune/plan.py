"""What is fixed for a whole study: the base config, the seeds, the metric and its direction."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

from kdlab.config.load import apply_overrides
from kdlab.config.schema import Experiment
from kdlab.config.tuning import ParamRange, TuneSpec
from kdlab.errors import KdlabError

LOWER_IS_BETTER = {"loss", "ppl"}


@dataclass
class Plan:
    base: dict  # the validated config, resolved, without `tune`
    spec: TuneSpec
    study: str
    metric: str
    direction: str
    seeds: list[int]
    epochs: int

    @property
    def epoch_key(self) -> str:
        """The per-epoch record key the metric follows (for pruning)."""
        return self.metric.removeprefix("best_")

    @property
    def test_key(self) -> str:
        """The test counterpart shown beside the metric (never used to choose)."""
        return self.metric.replace("val_", "test_", 1)

    def config(self, name: str, values: dict[str, Any]) -> dict:
        cfg = copy.deepcopy(self.base)
        apply_overrides(cfg, [(path.split("."), v) for path, v in values.items()])
        cfg.update(name=name, seeds=list(self.seeds))
        cfg["logging"]["mlflow_experiment"] = cfg["logging"].get("mlflow_experiment") or self.study
        return cfg


def reported_metrics(exp: Experiment) -> tuple[list[str], Any]:
    """The summary keys a trial can be judged on: the validation metrics the task reports
    (read from one evaluation of an untrained student) and best_val_<primary>."""
    from kdlab.engine.evaluation import evaluate
    from kdlab.models.build import build_model
    from kdlab.stages.building import load_data
    from kdlab.tasks.base import get_task

    data = load_data(exp.data)
    task = get_task(data)
    ev = evaluate(build_model(exp.student, data), data.val, task, data.prepare, exp.data.eval_batch_size)
    return [f"best_val_{task.primary_metric}", *(f"val_{k}" for k in ev)], task


def make_plan(exp: Experiment) -> Plan:
    spec = exp.tune
    if spec is None:
        raise KdlabError("this config has no `tune:` section: add one with `params:` (see docs/tuning.md)")
    if exp.variants:
        raise KdlabError("tune searches one method set: give `methods:` instead of `variants:`")
    if exp.pipeline is not None and exp.pipeline.name != "distill":
        raise KdlabError(f"tune runs the distill pipeline; this config names pipeline '{exp.pipeline.name}'")
    if len(exp.seeds) < spec.seeds_per_trial:
        raise KdlabError(f"tune.seeds_per_trial is {spec.seeds_per_trial} but `seeds` lists {len(exp.seeds)}: "
                         f"list at least {spec.seeds_per_trial} seeds")
    known, task = reported_metrics(exp)
    metric = spec.metric or known[0]
    if metric not in known:
        raise KdlabError(f"tune.metric '{metric}' is not reported by the {task.name} task: "
                         f"choose one of {', '.join(known)}")
    base_name = metric.removeprefix("best_").removeprefix("val_")
    if spec.direction:
        direction = spec.direction
    elif base_name == task.primary_metric:
        direction = "maximize" if task.higher_is_better else "minimize"
    else:
        direction = "minimize" if base_name in LOWER_IS_BETTER else "maximize"
    base = exp.model_dump(mode="json", exclude={"tune"})
    # A teacher's seed defaults to the first of `seeds`; a trial that runs only its missing
    # seeds (after a kill) must still distil from the same teacher: pin it.
    for t in [base["teacher"]] if base["teacher"] else base["teachers"]:
        t["seed"] = exp.seeds[0] if t["seed"] is None else t["seed"]
    return Plan(
        base=base, spec=spec, study=spec.study or exp.name,
        metric=metric, direction=direction, seeds=list(exp.seeds[: spec.seeds_per_trial]), epochs=exp.train.epochs,
    )


def suggest(trial, path: str, rng: ParamRange) -> Any:
    if rng.choices is not None:
        return trial.suggest_categorical(path, rng.choices)
    if rng.is_int:
        return trial.suggest_int(path, rng.low, rng.high, log=rng.log)
    return trial.suggest_float(path, float(rng.low), float(rng.high), log=rng.log)


def mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)
