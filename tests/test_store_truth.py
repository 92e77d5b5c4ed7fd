"""The run store tells the truth: a killed run shows as interrupted and `--resume` continues it
in place; `--resume` of a finished config trains nothing; processes that need the same teacher
at once train it once; each run records its primary metric."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import cli, history, write_config
from kdlab.store.runstore import RunStore

ENV = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
# CE only (no teacher stage), slow enough per epoch that a kill lands mid-run.
SLOW = {"methods": [{"name": "ce"}], "student": {"name": "mlp", "params": {"hidden": [512, 512]}},
        "train": {"epochs": 40, "optimizer": {"name": "adam", "lr": 0.001, "weight_decay": 0.0}}}


def _rows(store):
    return RunStore(store).rows() if Path(store, "index.sqlite").exists() else []


def _start(cfg, store, *extra):
    return subprocess.Popen([sys.executable, "-m", "kdlab", "run", cfg, "--store", store, "--quiet", *extra],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(cond, timeout=120.0):
    t0 = time.time()
    while not cond():
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("when", ["before its first checkpoint", "after some epochs"])
def test_a_killed_run_is_interrupted_and_resume_continues_it(tmp_path, store, capsys, when):
    cfg = write_config(tmp_path, **SLOW)
    proc = _start(cfg, store)

    def db_rows():
        try:
            return _rows(store)
        except sqlite3.Error:  # the index is being created
            return []

    if when == "before its first checkpoint":
        _wait_for(lambda: db_rows())
    else:
        _wait_for(lambda: db_rows() and Path(db_rows()[0]["path"], "checkpoints", "last.pt").exists()
                  and len(history(db_rows()[0]["path"])) >= 2)
    proc.send_signal(signal.SIGKILL)  # no handler runs: only the OS knows the process ended
    proc.wait()
    (row,) = _rows(store)
    assert row["status"] == "interrupted"  # stored as running; its process holds no lock
    assert cli("runs", "--store", store) == 0
    assert "interrupted" in capsys.readouterr().out
    done_before = len(history(row["path"])) if Path(row["path"], "metrics.jsonl").exists() else 0

    assert cli("run", cfg, "--store", store, "--quiet", "--resume") == 0
    out = capsys.readouterr().out
    (after,) = _rows(store)
    assert after["id"] == row["id"] and after["status"] == "done"  # continued in place, not beside it
    assert len(history(after["path"])) == 40 >= done_before

    # The same metrics as a run never killed (time fields aside).
    full = str(tmp_path / "full")
    assert cli("run", cfg, "--store", full, "--quiet") == 0
    (ref,) = _rows(full)
    assert history(after["path"], timeless=True) == history(ref["path"], timeless=True)
    assert "test top1" in out


def test_resume_of_a_finished_config_trains_nothing(tmp_path, store, capsys):
    cfg = write_config(tmp_path)  # teacher + CE/KD student, 3 epochs
    assert cli("run", cfg, "--store", store, "--quiet") == 0
    first = capsys.readouterr().out
    before = {r["id"]: r for r in _rows(store)}
    stamps = {rid: Path(r["path"], "metrics.jsonl").stat().st_mtime_ns for rid, r in before.items()}
    ckpts = {rid: Path(r["path"], "checkpoints", "last.pt").stat().st_mtime_ns for rid, r in before.items()}

    assert cli("run", cfg, "--store", store, "--resume") == 0
    captured = capsys.readouterr()
    assert "already finished" in captured.out + captured.err
    after = {r["id"]: r for r in _rows(store)}
    assert after.keys() == before.keys()  # no new run
    for rid, r in after.items():
        assert r["status"] == "done"
        assert Path(r["path"], "metrics.jsonl").stat().st_mtime_ns == stamps[rid]  # nothing rewritten
        assert Path(r["path"], "checkpoints", "last.pt").stat().st_mtime_ns == ckpts[rid]
    # It still reports the same result (restored from the stored student).
    table = [l for l in first.splitlines() if "│" in l]
    assert table and all(l in captured.out for l in table)


@pytest.mark.slow
def test_two_processes_needing_the_same_teacher_train_it_once(tmp_path, store):
    cfg = write_config(tmp_path, train={"epochs": 8, "optimizer": {"name": "adam", "lr": 0.01, "weight_decay": 0.0}})
    a = _start(cfg, store)
    b = _start(cfg, store)
    outs = [p.communicate(timeout=300) for p in (a, b)]
    assert a.returncode == 0 and b.returncode == 0, outs
    rows = _rows(store)
    assert sum(r["kind"] == "teacher" for r in rows) == 1
    assert sum(r["kind"] == "student" for r in rows) == 2  # both students trained, from the one teacher


def test_runs_show_each_run_primary_metric(tmp_path, store, capsys):
    cfg = write_config(tmp_path)
    assert cli("run", cfg, "--store", store, "--quiet") == 0
    capsys.readouterr()
    for r in _rows(store):
        s = json.loads(Path(r["path"], "summary.json").read_text())
        assert r["metric"] == "top1" and r["score"] == s["best_test_top1"]
    assert cli("runs", "--store", store) == 0
    out = capsys.readouterr().out
    assert "metric" in out and "top1" in out


def test_resume_from_a_weights_only_last_checkpoint_is_refused_clearly(tmp_path, store, capsys):
    """A `last.pt` replaced by a plain state dict (e.g. a user's copy) cannot be continued:
    one line says so and how to go on, nothing in the run is touched."""
    import torch

    cfg = write_config(tmp_path, methods=[{"name": "ce"}])
    assert cli("run", cfg, "--store", store, "--quiet", "--stop-after-epoch", "1") == 0
    (row,) = _rows(store)
    last = Path(row["path"], "checkpoints", "last.pt")
    state = torch.load(last, weights_only=True)["model"]
    torch.save(state, last)
    before = last.read_bytes()
    capsys.readouterr()
    assert cli("run", cfg, "--store", store, "--quiet", "--resume") == 2
    err = capsys.readouterr().err
    assert "cannot be resumed" in err and "holds weights only" in err and "Traceback" not in err
    assert len([l for l in err.splitlines() if l.strip()]) <= 2
    assert last.read_bytes() == before and len(_rows(store)) == 1
