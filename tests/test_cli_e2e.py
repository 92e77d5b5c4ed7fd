"""End-to-end CLI runs: a tiny experiment lands in the store, teachers are reused, resume is exact."""

import statistics
from pathlib import Path

import pytest

from helpers import TINY, checkpoint, cli, history, same_tensors, write_config
from kdlab.store.runstore import RunStore


def test_validate_ok(tmp_path, capsys):
    assert cli("validate", write_config(tmp_path)) == 0
    assert "ok" in capsys.readouterr().out


def test_run_lands_in_store_and_reuses_teacher(tmp_path, store, capsys):
    cfg = write_config(tmp_path)
    assert cli("run", cfg, "--store", store, "--quiet") == 0
    rows = RunStore(store).rows()
    assert sorted(r["kind"] for r in rows) == ["student", "teacher"]
    assert all(r["status"] == "done" for r in rows)
    student = next(r for r in rows if r["kind"] == "student")
    s = student["summary"]
    assert {"test_top1", "test_top5", "best_test_top1", "val_top1", "params"} <= set(s)
    run_dir = Path(student["path"])
    assert (run_dir / "config.yaml").exists() and (run_dir / "summary.json").exists()
    assert (run_dir / "checkpoints" / "last.pt").exists() and (run_dir / "checkpoints" / "best.pt").exists()
    assert len(history(run_dir)) == TINY["train"]["epochs"]

    # Same teacher config and seed: the stored teacher is reused, not retrained.
    assert cli("run", cfg, "--store", store, "--quiet", "methods.1.tau=2") == 0
    rows = RunStore(store).rows()
    assert sum(r["kind"] == "teacher" for r in rows) == 1
    assert sum(r["kind"] == "student" for r in rows) == 2
    capsys.readouterr()

    assert cli("runs", "--store", store) == 0
    ids = [r["id"] for r in rows if r["kind"] == "student"]
    assert cli("compare", *ids, "--store", store) == 0
    shown = capsys.readouterr().out
    assert "test_top1" in shown and "±" in shown


def test_overrides_change_the_run(tmp_path, store):
    cfg = write_config(tmp_path)
    assert cli("run", cfg, "--store", store, "--quiet", "train.epochs=1", "methods=[{name: ce}]") == 0
    (row,) = RunStore(store).rows()  # ce needs no teacher: only the student ran
    assert row["kind"] == "student" and row["summary"]["epochs"] == 1


def test_seeds_give_mean_and_std(tmp_path, store, capsys):
    cfg = write_config(tmp_path, seeds=[0, 1], methods=[{"name": "ce"}])
    assert cli("run", cfg, "--store", store, "--quiet", "train.epochs=1") == 0
    rows = sorted(RunStore(store).rows(), key=lambda r: r["seed"])
    assert [r["seed"] for r in rows] == [0, 1] and len({r["grp"] for r in rows}) == 1
    top1 = [r["summary"]["test_top1"] for r in rows]
    # Pinned: read once from this run (torch 2.13, CPU, 1 thread); 359 test images, so exact counts.
    assert [round(v * 359 / 100) for v in top1] == [166, 231]
    # The printed cell is the mean ± sample std of the seeds' values.
    mean, std = statistics.mean(top1), statistics.stdev(top1)
    assert f"{mean:.2f} ± {std:.2f}" in capsys.readouterr().out
    # Each seed's run is the run of that seed alone: seeds are independent.
    alone = str(tmp_path / "alone")
    assert cli("run", cfg, "--store", alone, "--quiet", "train.epochs=1", "seeds=[1]") == 0
    (one,) = RunStore(alone).rows()
    assert same_tensors(checkpoint(one["path"])["model"], checkpoint(rows[1]["path"])["model"])


def test_resume_after_interruption_is_exact(tmp_path):
    cfg = write_config(tmp_path, **{"train": {**TINY["train"], "epochs": 4}})
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    assert cli("run", cfg, "--store", full, "--quiet") == 0
    # Interrupt inside the teacher, resume, interrupt inside the student, resume.
    assert cli("run", cfg, "--store", part, "--quiet", "--stop-after-epoch", "2") == 0
    statuses = {r["kind"]: r["status"] for r in RunStore(part).rows()}
    assert statuses == {"teacher": "interrupted"}
    assert cli("run", cfg, "--store", part, "--quiet", "--resume", "--stop-after-epoch", "3") == 0
    assert cli("run", cfg, "--store", part, "--quiet", "--resume") == 0
    for kind in ("teacher", "student"):
        (a,) = [r for r in RunStore(full).rows() if r["kind"] == kind]
        (b,) = [r for r in RunStore(part).rows() if r["kind"] == kind]
        assert b["status"] == "done"
        assert history(a["path"], timeless=True) == history(b["path"], timeless=True)
        for key in ("test_top1", "best_test_top1", "test_loss"):
            assert a["summary"][key] == pytest.approx(b["summary"][key], abs=1e-9)


def test_list_commands(capsys):
    for kind in ("models", "datasets", "methods"):
        assert cli("list", kind) == 0
    out = capsys.readouterr().out
    for name in ("resnet8x4", "digits", "hierarchy", "kd", "ls", "ce", "Hinton"):
        assert name in out
    assert cli("list", "layers", "resnet20") == 0
    assert "layer3.2.conv2" in capsys.readouterr().out


def test_run_ids_are_plain_directory_names(store):
    from kdlab.store.runstore import RunStore

    run = RunStore(store).create(name="takd digits", kind="student", grp="g", seed=0, config={},
                                 variant="main/assistant 1")
    assert "/" not in run.id and " " not in run.id
    assert run.path.parent == RunStore(store).root


def test_compare_labels_each_variant(tmp_path, store, capsys):
    cfg = write_config(tmp_path, methods=[{"name": "ce"}],
                       variants={"ce": [{"name": "ce"}], "ls": [{"name": "ls", "eps": 0.1}]})
    assert cli("run", cfg, "--store", store, "--quiet", "train.epochs=1") == 0
    ids = [r["id"] for r in RunStore(store).rows()]
    capsys.readouterr()
    assert cli("compare", *ids, "--store", store) == 0
    out = capsys.readouterr().out
    assert "tiny [ce]" in out and "tiny [ls]" in out  # not swallowed as console markup
