"""`kdlab tune`: a study runs end to end, survives a kill without repeating finished trials,
prunes hopeless trials, and its best config reproduces its best trial exactly."""

import copy
import json
from pathlib import Path

import pytest
import yaml

from helpers import TINY, cli, write_config
from kdlab.store.runstore import RunStore
from kdlab.tracking.base import Sink, extra_sinks

optuna = pytest.importorskip("optuna")

TUNE = {
    "params": {"methods.1.tau": {"low": 1.0, "high": 8.0, "log": True}, "methods.1.weight": {"low": 0.1, "high": 2.0}},
    "metric": "best_val_top1",
    "seeds_per_trial": 2,
    "pruner": "none",
}


def tune_config(tmp_path, **tune) -> str:
    cfg = copy.deepcopy(TINY)
    cfg.update(seeds=[0, 1], tune={**TUNE, **tune})
    return write_config(tmp_path, cfg)


def students(store) -> list[dict]:
    return [r for r in RunStore(store).rows() if r["kind"] == "student"]


def load_study(store, name="tiny"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{Path(store).resolve() / 'tune' / f'{name}.db'}")


class KillAt(Sink):
    """Ctrl-C in the middle of one run: after epoch `epoch` of the run named `name`, seed `seed`."""

    def __init__(self, epoch):
        self.epoch = epoch

    def log_metrics(self, record):
        if record["epoch"] == self.epoch:
            raise KeyboardInterrupt


def kill(name, seed, epoch):
    return lambda run, config, kind: KillAt(epoch) if config.get("name") == name and config.get("seed") == seed else None


def test_study_survives_a_kill_and_its_best_config_reproduces(tmp_path, store, capsys):
    cfg = tune_config(tmp_path)
    with extra_sinks(kill("tiny-t001", seed=1, epoch=1)):
        assert cli("tune", cfg, "--trials", "3", "--store", store, "--quiet") == 130
    before = {r["id"]: r for r in students(store)}
    assert sorted((r["name"], r["seed"], r["status"]) for r in before.values()) == [
        ("tiny-t000", 0, "done"), ("tiny-t000", 1, "done"), ("tiny-t001", 0, "done"), ("tiny-t001", 1, "interrupted")]
    assert "--resume" in capsys.readouterr().out

    # Without --resume an existing study is not silently extended.
    assert cli("tune", cfg, "--trials", "3", "--store", store, "--quiet") == 2
    assert "add --resume" in capsys.readouterr().err

    assert cli("tune", cfg, "--trials", "3", "--store", store, "--quiet", "--resume") == 0
    out = capsys.readouterr().out
    after = students(store)
    # Three trials × two seeds, each run once: finished runs were not repeated and the
    # interrupted one continued in place (same run id) instead of starting over. (Optuna's
    # trial 2 is trial 1 again, re-queued under its name; trial 3 is new.)
    assert sorted((r["name"], r["seed"]) for r in after) == [(f"tiny-t00{t}", s) for t in (0, 1, 3) for s in (0, 1)]
    assert all(r["status"] == "done" for r in after)
    assert {r["id"] for r in after} >= set(before)
    assert sum(r["kind"] == "teacher" for r in RunStore(store).rows()) == 1  # one teacher for the whole study

    study = load_study(store)
    states = sorted(t.state.name for t in study.trials)
    assert states == ["COMPLETE", "COMPLETE", "COMPLETE", "FAIL"]  # the interrupted attempt, re-queued
    by_name = {r["name"]: [] for r in after}
    for r in sorted(after, key=lambda r: r["seed"]):
        by_name[r["name"]].append(r["summary"]["best_val_top1"])
    for t in study.trials:
        if t.state.name == "COMPLETE":  # a trial's value is the mean over its seeds' runs
            assert t.user_attrs["values"] == by_name[t.user_attrs["runs_as"]]
            assert t.value == pytest.approx(sum(t.user_attrs["values"]) / 2)
    assert "±" in out and "best config" in out
    png = Path(store, "tune", "tiny.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The best config is an ordinary experiment: run again, same seeds, same numbers.
    best_path = Path(store, "tune", "tiny-best.yaml")
    best_cfg = yaml.safe_load(best_path.read_text())
    assert "tune" not in best_cfg and best_cfg["seeds"] == [0, 1]
    best = max((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert best_cfg["methods"][1]["tau"] == best.params["methods.1.tau"]
    assert best_cfg["methods"][1]["weight"] == best.params["methods.1.weight"]
    assert cli("run", best_path, "--store", store, "--quiet") == 0
    again = sorted((r for r in students(store) if r["name"] == "tiny-best"), key=lambda r: r["seed"])
    assert [r["summary"]["best_val_top1"] for r in again] == best.user_attrs["values"]
    assert [r["summary"]["best_test_top1"] for r in again] == best.user_attrs["test"]


def test_median_pruner_stops_hopeless_trials(tmp_path, store):
    # lr 1e-6 cannot learn in 3 epochs; once one trial has finished, such trials fall below the median.
    cfg = tune_config(tmp_path, params={"train.optimizer.lr": {"choices": [0.01, 0.000001]}}, seeds_per_trial=1,
                      pruner="median", startup_trials=1, prune_after_epochs=1)
    assert cli("tune", cfg, "--trials", "5", "--store", store, "--quiet") == 0
    study = load_study(store)
    first = next(t for t in study.trials if t.state.name == "COMPLETE")
    later_slow = [t for t in study.trials if t.number > first.number and t.params["train.optimizer.lr"] < 1e-3]
    assert later_slow, "the seeded sampler should try the slow rate after the first trial"
    assert all(t.state.name == "PRUNED" for t in later_slow)
    runs = {r["name"]: r for r in students(store)}
    for t in later_slow:
        run = runs[t.user_attrs["runs_as"]]
        assert run["status"] == "pruned"
        assert len(Path(run["path"], "metrics.jsonl").read_text().splitlines()) == 1  # stopped after epoch 1


def run_bad(capsys, *args):
    code = cli(*args)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and 1 <= len(err.strip().splitlines()) <= 2, err
    return err


@pytest.mark.parametrize("tune, needles", [
    ({"params": {"methods.1.tauu": {"low": 1, "high": 4}}}, ["'methods.1.tauu' is not a parameter", "tau"]),
    ({"params": {"methods.7.tau": {"low": 1, "high": 4}}}, ["'methods.7.tau' is not a parameter"]),
    ({"params": {"methods.1.tau": {"low": 4, "high": 4}}}, ["empty range", "low (4) must be below high (4)"]),
    ({"params": {"methods.1.tau": {"choices": []}}}, ["choices is empty"]),
    ({"metric": "best_test_top1"}, ["test metric", "select on validation"]),
])
def test_bad_tune_sections(tmp_path, capsys, tune, needles):
    err = run_bad(capsys, "tune", tune_config(tmp_path, **tune), "--trials", "1", "--store", str(tmp_path / "s"))
    for n in needles:
        assert n in err, err


def test_metric_the_task_does_not_report(tmp_path, store, capsys):
    err = run_bad(capsys, "tune", tune_config(tmp_path, metric="val_ndcg20"), "--trials", "1", "--store", store)
    assert "'val_ndcg20' is not reported by the classification task" in err and "best_val_top1" in err
    assert RunStore(store).rows() == []


def test_demo_study_config_is_valid(capsys):
    assert cli("validate", "configs/tune/demo_kd.yaml") == 0
    cfg = yaml.safe_load(Path("configs/tune/demo_kd.yaml").read_text())
    assert set(cfg["tune"]["params"]) == {"methods.1.tau", "methods.1.weight"}
