"""Bad inputs a user meets on a bad day (issue 10, item 5): each is refused with one or two
clear lines and exit code 2, before anything is trained or written; relative config paths are
read from the config file's folder; npz features are standardised on the training split."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from helpers import TINY, assert_clear, cli, run_bad, write_config
from kdlab.errors import KdlabError
from kdlab.registry import DATASETS
from kdlab.store.runstore import RunStore


def npz(path: Path, x, y, **more) -> Path:
    np.savez(path, x=np.asarray(x), y=np.asarray(y), **more)
    return path


def build(**params):
    return DATASETS.get("npz").obj(**{"seed": 0, **params})


# ---------------------------------------------------------------- config files


@pytest.mark.parametrize(
    "data",
    [
        "name: café\n".encode("latin-1") + yaml.safe_dump(TINY).encode(),
        yaml.safe_dump(TINY).encode("utf-16"),
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xd8",
    ],
    ids=["latin-1", "utf-16", "binary"],
)
def test_config_that_is_not_utf8(tmp_path, capsys, data):
    p = tmp_path / "exp.yaml"
    p.write_bytes(data)
    assert_clear(*run_bad(capsys, "validate", p), str(p), "not UTF-8", "UTF-8 YAML")


def test_utf8_with_bom_is_read(tmp_path, capsys):
    p = tmp_path / "exp.yaml"
    p.write_bytes(b"\xef\xbb\xbf" + yaml.safe_dump({**TINY, "name": "café"}, allow_unicode=True).encode())
    assert cli("validate", p) == 0


@pytest.mark.parametrize(
    "text, key, line",
    [
        ("train: {epochs: 3}\ndata: {name: digits}\nstudent: {name: mlp}\ntrain: {epochs: 5}\n", "train", "line 4"),
        ("data:\n  name: digits\n  name: mnist1d\nstudent: {name: mlp}\n", "name", "line 3"),
    ],
)
def test_duplicate_keys_are_refused(tmp_path, capsys, text, key, line):
    p = tmp_path / "dup.yaml"
    p.write_text(text)
    assert_clear(*run_bad(capsys, "validate", p), f"duplicate key '{key}'", line, "first at line")


def test_merge_keys_may_still_override(tmp_path, capsys):
    p = tmp_path / "merge.yaml"
    p.write_text("base: &b {name: mlp, params: {hidden: [8]}}\n"
                 "data: {name: digits}\nstudent: {<<: *b, name: mlp}\n".replace("base:", "x-base:"))
    code, _, err = run_bad(capsys, "validate", p)
    assert "duplicate" not in err  # refused for the unknown section, not for the merge
    assert code == 2 and "x-base" in err


# ---------------------------------------------------------------- values refused at validation


@pytest.mark.parametrize(
    "override, needles",
    [
        ("data.batch_size=true", ["data.batch_size", "must be a number, not true"]),
        ("train.epochs=false", ["train.epochs", "not false"]),
        ("train.optimizer.lr=true", ["train.optimizer.lr", "not true"]),
        ("methods.1.tau=true", ["method 'kd' tau", "not true"]),
        ("methods.0.weight=true", ["weight", "not true"]),
        ("data.params.val_fraction=true", ["val_fraction", "not true"]),
        ("seeds=[true]", ["seeds", "not true"]),
        ("seeds=[0,0]", ["seed(s) 0 given twice"]),
        ("seeds=[1,2,1]", ["seed(s) 1 given twice"]),
        ("train.optimizer.betas=[2,3]", ["train.optimizer.betas", "less than 1"]),
        ("train.optimizer.betas=[0.9,-0.1]", ["train.optimizer.betas.1", "greater than or equal to 0"]),
        ("train.optimizer.lr=.inf", ["train.optimizer.lr", "finite"]),
        ("train.optimizer={name: sgd, nesterov: true, momentum: 0}", ["nesterov needs a momentum"]),
        ("train.schedule.milestones=[30,20]", ["milestones must be increasing"]),
        ("train.schedule.milestones=[0]", ["milestones"]),
        ("device=cudax", ["device must be auto, cpu, cuda or cuda:N"]),
    ],
)
def test_nonsense_values_refused_at_validation(tmp_path, capsys, override, needles):
    assert_clear(*run_bad(capsys, "validate", write_config(tmp_path), override), *needles)


def test_ints_still_accepted_for_floats(tmp_path, capsys):
    cfg = write_config(tmp_path)
    assert cli("validate", cfg, "train.optimizer.lr=1", "methods.1.tau=2", "train.optimizer.betas=[0,0.5]") == 0


# ---------------------------------------------------------------- command-line options


@pytest.mark.parametrize(
    "option, needles",
    [
        (["--device", "tpu"], ["--device", "auto, cpu, cuda or cuda:N", "'tpu'"]),
        (["--stop-after-epoch", "0"], ["--stop-after-epoch", "1 or more"]),
        (["--stop-after-epoch", "-1"], ["--stop-after-epoch", "1 or more"]),
    ],
)
def test_bad_run_options(tmp_path, capsys, store, option, needles):
    assert_clear(*run_bad(capsys, "run", write_config(tmp_path), "--store", store, "--quiet", *option), *needles)
    assert not Path(store).exists()  # refused before the store was even opened


# ---------------------------------------------------------------- run store


def test_store_is_a_file(tmp_path, capsys):
    f = tmp_path / "store"
    f.write_text("my notes\n")
    assert_clear(*run_bad(capsys, "run", write_config(tmp_path), "--store", f, "--quiet"),
                 "is a file, not a directory", "--store")
    assert f.read_text() == "my notes\n"  # nothing already written lost


def test_store_under_a_file(tmp_path, capsys):
    f = tmp_path / "notes.txt"
    f.write_text("x")
    assert_clear(*run_bad(capsys, "runs", "--store", f / "runs"), "lies under a file")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes anywhere")
def test_store_read_only(tmp_path, capsys):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    try:
        assert_clear(*run_bad(capsys, "run", write_config(tmp_path), "--store", d, "--quiet"), "not writable")
    finally:
        d.chmod(0o755)


def test_store_not_writable_or_index_unreadable(tmp_path, monkeypatch):
    d = tmp_path / "store"
    RunStore(d)
    (d / "index.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(KdlabError, match="cannot open the run index .* writable directory"):
        RunStore(d)
    monkeypatch.setattr(os, "access", lambda *a, **k: False)  # as a read-only folder is for a non-root user
    with pytest.raises(KdlabError, match="is not writable"):
        RunStore(tmp_path / "other")


# ---------------------------------------------------------------- npz labels and sizes


def test_npz_huge_label_refused(tmp_path):
    p = npz(tmp_path / "d.npz", np.zeros((40, 3)), np.r_[np.repeat([0, 1], 19), 1, 1e9].astype(np.float64))
    with pytest.raises(KdlabError, match=r"3 distinct labels but the largest is 1000000000: labels must be 0..C-1"):
        build(path=str(p))


def test_npz_num_classes_declares_absent_classes(tmp_path):
    y = np.repeat([0, 9], 20)
    p = npz(tmp_path / "d.npz", np.random.default_rng(0).normal(size=(40, 3)), y)
    with pytest.raises(KdlabError, match="labels must be 0..C-1"):
        build(path=str(p))
    assert build(path=str(p), num_classes=10).num_classes == 10
    with pytest.raises(KdlabError, match="has label 9 but num_classes=5: labels must be 0..4"):
        build(path=str(p), num_classes=5)


def test_npz_single_class_refused(tmp_path, capsys, store):
    p = npz(tmp_path / "d.npz", np.random.default_rng(0).normal(size=(30, 3)), np.zeros(30, int))
    with pytest.raises(KdlabError, match=r"train split holds 1 class\(es\) \(0\).*at least 2 classes"):
        build(path=str(p))
    cfg = write_config(tmp_path, data={"name": "npz", "params": {"path": str(p)}})
    assert_clear(*run_bad(capsys, "run", cfg, "--store", store, "--quiet"), "at least 2 classes")
    assert RunStore(store).rows() == []


def test_npz_too_small_for_the_splits(tmp_path, capsys, store):
    p = npz(tmp_path / "d.npz", np.eye(3), np.array([0, 1, 2]))
    with pytest.raises(KdlabError) as e:
        build(path=str(p))
    msg = str(e.value)
    assert "3 samples gave train 3, val 0, test 0" in msg
    assert "val_fraction=0.1 needs at least 10 samples" in msg and "test_fraction=0.2 needs at least 5" in msg
    cfg = write_config(tmp_path, data={"name": "npz", "params": {"path": str(p)}})
    assert_clear(*run_bad(capsys, "run", cfg, "--store", store, "--quiet"), "too small for its splits")
    assert RunStore(store).rows() == []


def test_split_check_names_the_carved_val_split(tmp_path):
    x = np.random.default_rng(0).normal(size=(4, 2))
    p = npz(tmp_path / "d.npz", x, [0, 0, 1, 1], x_test=x, y_test=np.array([0, 1, 0, 1]))
    with pytest.raises(KdlabError, match=r"gave train 4, val 0;.*val_fraction=0.1 needs at least 10"):
        build(path=str(p))
    assert len(build(path=str(p), val_fraction=0.0).train) == 4  # val is the test split: nothing to carve


def test_every_builtin_split_is_checked():
    from kdlab.data.base import split_arrays

    with pytest.raises(KdlabError, match="gave train 0, val 1, test 1"):
        split_arrays(np.zeros((2, 1)), np.array([0, 0]), 0, 0.3, 0.5)


# ---------------------------------------------------------------- npz standardisation


def test_npz_standardised_with_training_statistics_only(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(loc=[5.0, -300.0, 0.0], scale=[2.0, 50.0, 1.0], size=(200, 3))
    x[:, 2] = 7.0  # a constant feature: centred, not divided by 0
    y = np.repeat([0, 1], 100)
    p = npz(tmp_path / "d.npz", x, y)
    raw = build(path=str(p), standardize=False)
    std = build(path=str(p))
    tr = raw.train["x"].double()
    mean, sd = tr.mean(0), tr.std(0, unbiased=False)
    sd[2] = 1.0
    for name in ("train", "val", "test"):
        expected = ((getattr(raw, name)["x"].double() - mean) / sd).float()
        assert torch.allclose(getattr(std, name)["x"], expected, atol=1e-6), name
        assert torch.equal(getattr(std, name)["y"], getattr(raw, name)["y"])
    # training statistics, not those of all data: val/test are not themselves centred at 0 exactly
    every = torch.from_numpy(x)
    assert not torch.allclose(every.mean(0), mean)
    assert torch.allclose(std.train["x"].double().mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(std.train["x"][:, :2].double().std(0, unbiased=False), torch.ones(2, dtype=torch.float64), atol=1e-5)
    assert torch.equal(std.train["x"][:, 2], torch.zeros(len(std.train)))


def test_npz_given_test_split_uses_training_statistics(tmp_path):
    rng = np.random.default_rng(1)
    x, x_test = rng.normal(3.0, 2.0, size=(60, 2)), rng.normal(10.0, 1.0, size=(10, 2))
    p = npz(tmp_path / "d.npz", x, np.repeat([0, 1], 30), x_test=x_test, y_test=np.repeat([0, 1], 5))
    b = build(path=str(p), val_fraction=0.0)
    mean, sd = torch.from_numpy(x).mean(0), torch.from_numpy(x).std(0, unbiased=False)
    assert b.val is b.test
    assert torch.allclose(b.test["x"], ((torch.from_numpy(x_test) - mean) / sd).float(), atol=1e-6)


def test_unstandardised_large_features_warn(tmp_path):
    rng = np.random.default_rng(0)
    p = npz(tmp_path / "d.npz", rng.normal(0, 1, size=(50, 2)) * [1.0, 5000.0], np.repeat([0, 1], 25))
    with pytest.warns(UserWarning, match="features reach .* not standardised"):
        build(path=str(p), standardize=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build(path=str(p))


# ---------------------------------------------------------------- relative paths


def _own_data_config(folder: Path, **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    npz(folder / "d.npz", rng.normal(size=(60, 4)), np.repeat([0, 1, 2], 20))
    cfg = {k: v for k, v in TINY.items() if k != "teacher"}
    cfg.update({"data": {"name": "npz", "params": {"path": "d.npz"}}, "train": {**TINY["train"], "epochs": 1},
                "methods": [{"name": "ce"}], **extra})
    path = folder / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_relative_paths_are_read_from_the_config_folder(tmp_path, monkeypatch, capsys):
    from kdlab.config.load import load_config

    cfg = _own_data_config(tmp_path / "project")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_config(cfg).data.params["path"] == str(tmp_path / "project" / "d.npz")
    assert cli("validate", cfg) == 0
    assert cli("run", cfg, "--store", "runs", "--quiet") == 0
    (row,) = RunStore(elsewhere / "runs").rows()
    assert row["status"] == "done"
    # on the command line a relative path is read from the current folder
    npz(elsewhere / "here.npz", np.zeros((30, 4)), np.repeat([0, 1, 2], 10))
    assert load_config(cfg, ["data.params.path=here.npz"]).data.params["path"] == str(elsewhere / "here.npz")


def test_validate_checks_that_input_files_exist(tmp_path, monkeypatch, capsys):
    cfg = _own_data_config(tmp_path / "project", teacher={"model": {"name": "mlp"}, "checkpoint": "t.pt"},
                           methods=[{"name": "kd"}])
    monkeypatch.chdir(tmp_path)
    assert_clear(*run_bad(capsys, "validate", cfg), "teacher.checkpoint", str(tmp_path / "project" / "t.pt"),
                 "does not exist", "config file's folder")
    assert_clear(*run_bad(capsys, "validate", cfg, "teacher.checkpoint=nope/t.pt"), str(tmp_path / "nope" / "t.pt"))
    assert_clear(*run_bad(capsys, "validate", cfg, "teacher.checkpoint=."), "teacher.checkpoint", "is a folder")
    assert_clear(*run_bad(capsys, "validate", tmp_path), "is a folder", "YAML file")


# ---------------------------------------------------------------- what the printed accuracies are


def test_printed_lines_say_which_accuracy(capsys):
    from kdlab.pipelines.distill import ExperimentResult
    from kdlab.cli.results import print_result
    from kdlab.report.tables import comparison_rows

    runs = [{"params": 100, "test_top1": 80.0, "best_test_top1": 82.0}]
    print_result(ExperimentResult("x", "top1", {"ce": runs, "kd": runs}, [{"params": 500, "test_top1": 90.5}]))
    out = " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    assert "teacher 0: 500 params, test top1 90.50 (the weights distilled from: best-val epoch or given" in out
    header, rows = comparison_rows({"ce": runs, "kd": runs}, "top1", "ce")
    assert header[3:] == ["test top1 (last epoch)", "test top1 (best-val epoch)", "gain over ce (last epoch)"]
    assert rows[1][3:] == ["80.00 ± 0.00", "82.00 ± 0.00", "+0.00 ± 0.00"]
