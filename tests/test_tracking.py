"""TensorBoard and MLflow sinks: what a run records reaches them (read back with each tool's
own reader), only rank 0 logs, and a missing or unknown backend is refused before training."""

import json
import sys
from pathlib import Path

import pytest

from helpers import cli, write_config
from kdlab.engine import distributed as D
from kdlab.store.runstore import RunStore
from kdlab.tracking.base import attach_sinks

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")


def student_row(store):
    return next(r for r in RunStore(store).rows() if r["kind"] == "student")


def history(run_path) -> list[dict]:
    return [json.loads(l) for l in Path(run_path, "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """One tiny KD run (teacher + student, 3 epochs) mirrored to both backends."""
    tmp = tmp_path_factory.mktemp("logged")
    store = str(tmp / "store")
    assert cli("run", write_config(tmp), "--store", store, "--quiet", "--log", "tensorboard,mlflow") == 0
    return store


def test_tensorboard_events_hold_every_record(logged):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    row = student_row(logged)
    acc = EventAccumulator(str(Path(row["path"]) / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"lr", "train/ce", "train/kd", "train/total", "val/top1", "val/loss", "test/top1", "best_test/top1"} <= tags
    hist = history(row["path"])
    for key, tag in [("val_top1", "val/top1"), ("train_kd", "train/kd"), ("lr", "lr")]:
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [0, 1, 2]
        assert [e.value for e in events] == pytest.approx([h[key] for h in hist], rel=1e-6)  # float32 in TB
    (final,) = acc.Scalars("test/top1")
    assert final.step == 2 and final.value == pytest.approx(row["summary"]["test_top1"], rel=1e-6)
    # The teacher is a run too: it logs beside the student, under its own run id.
    teacher = next(r for r in RunStore(logged).rows() if r["kind"] == "teacher")
    assert any(Path(teacher["path"], "tb").iterdir())


def test_mlflow_run_holds_params_and_metrics(logged):
    from mlflow.tracking import MlflowClient

    row = student_row(logged)
    client = MlflowClient(f"sqlite:///{Path(logged).resolve() / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id],
                                f"tags.`kdlab.run_id` = '{row['id']}'")
    assert run.info.status == "FINISHED" and run.info.run_name == row["id"]
    p = run.data.params
    assert p["methods.1.name"] == "kd" and float(p["methods.1.tau"]) == 4.0 and float(p["methods.1.weight"]) == 0.5
    assert p["train.epochs"] == "3" and p["data.name"] == "digits" and p["student.params.hidden"] == "[16]"
    hist = history(row["path"])
    vals = client.get_metric_history(run.info.run_id, "val_top1")
    assert [(m.step, m.value) for m in vals] == [(h["epoch"], h["val_top1"]) for h in hist]
    assert run.data.metrics["test_top1"] == row["summary"]["test_top1"]
    assert run.data.metrics["best_test_top1"] == row["summary"]["best_test_top1"]


def test_no_backend_no_files(tmp_path, store):
    assert cli("run", write_config(tmp_path), "--store", store, "--quiet", "train.epochs=1") == 0
    assert not Path(student_row(store)["path"], "tb").exists()
    assert not Path(store, "mlflow.db").exists()


def test_only_rank_zero_logs(tmp_path, monkeypatch):
    store = RunStore(tmp_path / "store")
    cfg = {"logging": {"backends": ["tensorboard"]}}
    run = store.create(name="x", kind="student", grp="g", seed=0, config=cfg)
    monkeypatch.setattr(D, "current", lambda: D.DistEnv(rank=1, world=2))
    assert attach_sinks(run, cfg, "student").sinks == []
    monkeypatch.setattr(D, "current", lambda: D.DistEnv(rank=0, world=2))
    assert len(attach_sinks(run, cfg, "student").sinks) == 1


@pytest.mark.parametrize("module, backend", [("tensorboard", "tensorboard"), ("mlflow", "mlflow")])
def test_backend_not_installed(tmp_path, store, capsys, monkeypatch, module, backend):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    code = cli("run", write_config(tmp_path), "--store", store, "--quiet", "--log", backend)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
    assert f"logging backend '{backend}' is not installed" in err and "kdlab[track]" in err
    assert RunStore(store).rows() == []  # refused before anything trained


def test_unknown_backend(tmp_path, capsys):
    code = cli("validate", write_config(tmp_path), "logging.backends=[tensorbord]")
    err = capsys.readouterr().err
    assert code == 2 and "unknown logging backend 'tensorbord'" in err and "tensorboard" in err, err
