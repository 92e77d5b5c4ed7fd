"""Methods and instruments that read the whole training split work on streamed data: they take
the labels without reading inputs (cs_kd, CRD), read extra samples one by one (cs_kd's
partners, DLB's last batch) or pass over the split in chunks (kd_sim's class means, the
instruments, diagnose's matched LS), and give the run of the in-memory path for the same seed.
Education, which relabels the training split in memory, refuses streamed data in one line."""

import json
from pathlib import Path

import pytest
import torch

from helpers import assert_clear, cli, history, run_bad, write_config
from kdlab.store.runstore import RunStore
from test_method_contract import ADAM, CASES, SETUPS, TEACHER_TRAIN

# method -> the config entries (the contract's own rows; CRD's setup on an MLP, which is quicker)
METHODS = {
    "cs_kd": ("mlp_self", [CASES["cs_kd"].method]),
    "dlb": ("mlp_self", [CASES["dlb"].method]),
    "crd": ("mlp", [{"name": "ce"}, CASES["crd"].method]),
    "kd_sim": ("mlp", [{"name": "ce"}, {"name": "kd_sim", "sim_source": "class_mean"}]),
    "kd_pt_sim": ("mlp", [{"name": "kd_pt_sim", "alpha": 0.5, "sim_source": "class_mean_target"}]),
    "record_w": ("mlp", [{"name": "ce"}, {"name": "kd"}, CASES["record_w"].method]),
    "geometry": ("hierarchy_self", [{"name": "ce"}, CASES["geometry"].method]),
    "teacher_check": ("mlp", [{"name": "ce"}, CASES["teacher_check"].method]),
}
TWO_EPOCHS = {"epochs": 2, "optimizer": ADAM, "schedule": {"name": "constant"}}


def _student(tmp_path, cfg, name):
    store = str(tmp_path / f"store-{name}")
    assert cli("run", write_config(tmp_path, cfg, name=f"{name}.yaml"), "--store", store, "--quiet") == 0
    (row,) = [r for r in RunStore(store).rows() if r["kind"] == "student"]
    summary = {k: v for k, v in row["summary"].items() if "time" not in k and k not in ("run_id", "wall_s")}
    return history(row["path"], timeless=True), summary


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_on_streamed_data_gives_the_in_memory_run(method, tmp_path):
    setup, methods = METHODS[method]
    cfg = {"name": method, "seeds": [0], "device": "cpu", **SETUPS[setup], "methods": methods, "train": TWO_EPOCHS}
    mem = _student(tmp_path, {**cfg, "data": {**cfg["data"], "stream": False}}, "mem")
    streamed = _student(tmp_path, {**cfg, "data": {**cfg["data"], "stream": True, "workers": 0}}, "stream")
    assert streamed[0] == mem[0] and len(mem[0]) == 2
    assert streamed[1] == mem[1]
    terms = {k for k in mem[0][-1] if k.startswith("train_")}
    assert terms, method


@pytest.mark.slow
def test_diagnose_on_streamed_data_gives_the_in_memory_report(tmp_path):
    """The teacher's diagnosis (confidence, ECE, matched LS) and every rung of the ladder."""
    from test_understanding_diagnose import TINY as DIAG

    cfg = {**DIAG, "seeds": [0], "teacher": {**DIAG["teacher"], "train": {**DIAG["teacher"]["train"], "epochs": 5}},
           "train": {**DIAG["train"], "epochs": 2}}
    results = {}
    for stream in (False, True):
        out = tmp_path / f"report-{stream}"
        path = write_config(tmp_path, {**cfg, "data": {**cfg["data"], "stream": stream, "workers": 0}}, name=f"d{stream}.yaml")
        assert cli("diagnose", path, "--store", tmp_path / f"s{stream}", "--out", out, "--quiet") == 0
        results[stream] = json.loads((out / "results.json").read_text())
    assert _facts(results[True]) == _facts(results[False])


def _facts(r):
    """A report without what differs by run: ids, paths, wall-clock times."""
    if isinstance(r, dict):
        return {k: _facts(v) for k, v in r.items()
                if not (k.endswith(("run_id", "_s", "seconds", "dir", "path")) or "time" in k)}
    return [_facts(v) for v in r] if isinstance(r, list) else r


def test_education_refuses_streamed_data_in_one_line(tmp_path, capsys):
    from test_education_pipeline import TRAIN

    cfg = {"name": "ed", "seeds": [0], "device": "cpu",
           "data": {"name": "hierarchy", "batch_size": 32, "stream": True, "workers": 0,
                    "params": {"num_superclasses": 3, "classes_per_superclass": 2, "dim": 8, "samples_per_class": 30}},
           "teacher": {"model": {"name": "mlp", "params": {"hidden": [32]}}, "train": TEACHER_TRAIN},
           "student": {"name": "mlp", "params": {"hidden": [16, 16, 16]}}, "train": TRAIN,
           "pipeline": {"name": "education", "groups": 3, "partition": "superclass", "grade_epochs": [0, 2, 4]}}
    assert_clear(*run_bad(capsys, "run", write_config(tmp_path, cfg), "--store", tmp_path / "store", "--quiet"),
                 "education", "data.stream: false")
    assert not Path(tmp_path, "store").exists() or not RunStore(str(tmp_path / "store")).rows()


@pytest.mark.slow
def test_seqkd_on_streamed_windows_generates_from_the_same_prompts(tmp_path):
    from kdlab.config.load import validate
    from kdlab.stages.runner import run_experiment
    from test_lm_seqkd import CFG

    cfg = {**CFG, "variants": {"ce": [{"name": "ce"}]}, "train": {**CFG["train"], "epochs": 1}}
    res = {stream: run_experiment(validate({**cfg, "data": {**cfg["data"], "stream": stream, "workers": 0}}),
                                  store=str(tmp_path / f"s{stream}"), progress=False) for stream in (False, True)}
    a, b = res[False].results["ce"][0], res[True].results["ce"][0]
    assert a["generations"] == b["generations"]  # keyed by the prompts and the teacher: the same outputs
    assert b["test_ppl"] == a["test_ppl"] and res[True].teachers[0]["test_ppl"] == res[False].teachers[0]["test_ppl"]


@pytest.mark.slow
def test_subclass_table_on_streamed_data(tmp_path):
    from kdlab.config.load import apply_overrides, parse_overrides, read_yaml, validate
    from kdlab.stages.runner import run_experiment
    from test_subclass_e2e import TINY as OVERRIDES

    counts = {}
    for stream in (False, True):
        raw = apply_overrides(read_yaml("configs/subclass/digits_2x5.yaml"),
                              parse_overrides([*OVERRIDES, f"data.stream={str(stream).lower()}", "data.workers=0"]))
        counts[stream] = run_experiment(validate(raw), store=str(tmp_path / f"s{stream}"), progress=False).counts
    assert counts[True].shape == (10, 10) and torch.equal(counts[True], counts[False])


def test_teacher_cache_refuses_streamed_data_in_one_line(tmp_path, capsys):
    from helpers import TINY

    cfg = {**TINY, "data": {**TINY["data"], "stream": True, "workers": 0},
           "teacher": {**TINY["teacher"], "cache": True}}
    assert_clear(*run_bad(capsys, "run", write_config(tmp_path, cfg), "--store", tmp_path / "store", "--quiet"),
                 "teacher 0's cache", "streamed", "data.stream: false")
    # refused before the teacher trains: no run was opened
    from kdlab.store.runstore import RunStore

    assert not (tmp_path / "store").exists() or RunStore(tmp_path / "store").rows() == []
