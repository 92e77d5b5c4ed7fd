"""`pipeline: {name: education}` end to end on tiny built-in data: a 3-grade schedule,
per-group teachers stored and reused, baselines, the forgetting plot, the final checkpoint."""

import io
import sqlite3
from pathlib import Path

import pytest
from rich.console import Console

from helpers import assert_pinned, history
from kdlab.config.schema import Experiment
from kdlab.engine.checkpoint import load_model_state, read_checkpoint
from kdlab.errors import KdlabError
from kdlab.models.build import build_model
from kdlab.stages.building import load_data
from kdlab.stages.runner import run_experiment

TRAIN = {"epochs": 6, "optimizer": {"name": "adam", "lr": 0.01, "weight_decay": 0.0}, "schedule": {"name": "constant"}}


def _exp(**pipeline):
    return Experiment.model_validate({
        "name": "ed-tiny",
        "seeds": [0],
        "device": "cpu",
        "data": {"name": "hierarchy", "batch_size": 32,
                 "params": {"num_superclasses": 3, "classes_per_superclass": 2, "dim": 8, "samples_per_class": 30}},
        "teacher": {"model": {"name": "mlp", "params": {"hidden": [32]}}, "train": {**TRAIN, "epochs": 4}},
        "student": {"name": "mlp", "params": {"hidden": [16, 16, 16]}},
        "train": TRAIN,
        "pipeline": {"name": "education", "groups": 3, "partition": "superclass", "grade_epochs": [0, 2, 4],
                     "baselines": ["ce", "kd", "avg"], "baseline_teachers": 2, **pipeline},
    })


def _teacher_rows(store):
    with sqlite3.connect(Path(store) / "index.sqlite") as db:
        return db.execute("SELECT id FROM runs WHERE kind='teacher'").fetchall()


@pytest.mark.slow
def test_education_pipeline_three_grades_end_to_end(store):
    exp = _exp()
    result = run_experiment(exp, store=store, progress=False)
    assert set(result.results) == {"ed", "ce", "kd", "avg"}
    # superclass partition: classes 2s, 2s+1 share a superclass, hence a group
    assert sorted(result.groups) == [[0, 1], [2, 3], [4, 5]]
    ed = result.results["ed"][0]
    assert [len(g) for g in ed["grade_accuracy"]] == [1, 2, 3]
    # Read once from this tiny run (see helpers.assert_pinned); chance is 16.7%.
    grades = {f"grade{i + 1}_group{g}": acc for i, accs in enumerate(ed["grade_accuracy"]) for g, acc in accs.items()}
    assert_pinned(grades, GRADE_PINS)
    assert_pinned({f"{k}_{m}": v[0][m] for k, v in result.results.items() for m in ("test_top1", "test_loss")}, PINS)
    # Every grade distilled from its group teachers: the KD term is logged, non-zero, each epoch,
    # and the ED student is not the CE baseline.
    assert all(e["train_kd"] > 0 for e in history(Path(store) / ed["run_id"]))
    assert ed["test_loss"] != pytest.approx(result.results["ce"][0]["test_loss"], rel=1e-6)
    assert Path(result.plot_path).is_file() and Path(result.plot_path).stat().st_size > 1000
    # 3 group teachers + 2 full-class teachers, each a stored stage
    assert len(_teacher_rows(store)) == 5
    roles = [t["role"] for t in result.teachers]
    assert roles.count("group 1 teacher 0") == 1 and sum(t["classes"] == 2 for t in result.teachers) == 3
    # The final ED weights load into a plain student: no missing or unexpected keys.
    data = load_data(exp.data)
    plain = build_model(exp.student, data)
    ck = read_checkpoint(Path(store) / ed["run_id"] / "checkpoints" / "best.pt")
    load_model_state(plain, ck["model"], "ed", "student")
    # A rich rendering with both tables.
    out = io.StringIO()
    Console(file=out, width=140).print(result.render())
    text = out.getvalue()
    assert "gain over ce" in text and "end of each grade" in text and "forgetting plot" in text
    # Running again reuses every teacher instead of training it again.
    run_experiment(_exp(baselines=["ce"]), store=store, progress=False)
    assert len(_teacher_rows(store)) == 5


# Accuracy per group at the end of each grade, and each variant's test figures.
GRADE_PINS = {"grade1_group1": 66.6667, "grade2_group1": 50.0, "grade2_group2": 41.6667,
              "grade3_group1": 75.0, "grade3_group2": 0.0, "grade3_group3": 50.0}
PINS = {"ed_test_top1": 41.6667, "ed_test_loss": 1.73141, "ce_test_top1": 41.6667, "ce_test_loss": 1.05368,
        "kd_test_top1": 41.6667, "kd_test_loss": 1.15578, "avg_test_top1": 44.4444, "avg_test_loss": 1.13041}


def test_generalist_mode_and_confusion_partition(store):
    exp = _exp(teacher_mode="generalist", partition="confusion", baselines=[], grade_stages=[0, 2, 3])
    result = run_experiment(exp, store=store, progress=False)
    assert set(result.results) == {"ed"}
    assert sorted(c for g in result.groups for c in g) == list(range(6))
    assert len(_teacher_rows(store)) == 1  # only the generalist, sliced per group


def test_bad_education_settings_are_clear_errors(store):
    with pytest.raises(KdlabError, match="last grade must use all 3"):
        run_experiment(_exp(grade_stages=[1, 1, 2], baselines=[]), store=store, progress=False)
    with pytest.raises(Exception, match="grade_epochs"):
        _exp(grade_epochs=[1, 2, 4])


@pytest.mark.slow
def test_ablation_arms_share_teachers_and_report_steps(store):
    arms = {"mixed": {"replay": "mixed"}, "one_grade": {"grade_groups": [3], "grade_epochs": [0], "alpha": 0.7}}
    result = run_experiment(_exp(baselines=["ce"], arms=arms), store=store, progress=False)
    assert list(result.results) == ["ed", "mixed", "one_grade", "ce"]
    assert len(_teacher_rows(store)) == 3  # the 3 group teachers, shared by every arm
    steps = {k: v[0]["steps"] for k, v in result.results.items()}
    # 42 training samples per group at batch 32: grades of 2 epochs over 1, 2, 3 groups in
    # single-group batches (2 per group); mixed: ceil(42/32), ceil(84/32), ceil(126/32) batches;
    # one grade = 6 epochs over every group in single-group batches; CE 6 x ceil(126/32).
    assert steps == {"ed": 2 * (2 + 4 + 6), "mixed": 2 * (2 + 3 + 4), "one_grade": 6 * 6, "ce": 6 * 4}
    assert [len(g) for g in result.results["one_grade"][0]["grade_accuracy"]] == [3]
    assert_pinned({f"{k}_{m}": v[0][f"test_{m}"] for k, v in result.results.items() for m in ("top1", "loss")}, ARM_PINS)
    text = render_text(result)
    assert "steps per run" in text and "mixed" in text
    assert Path(result.arms_plot_path).is_file() and Path(result.arms_plot_path).stat().st_size > 1000


ARM_PINS = {"ed_top1": 41.6667, "mixed_top1": 41.6667, "one_grade_top1": 47.2222, "ce_top1": 41.6667,
            "ed_loss": 1.73141, "mixed_loss": 1.69895, "one_grade_loss": 1.16979}


def render_text(result) -> str:
    buf = io.StringIO()
    Console(file=buf, width=200).print(result.render())
    return buf.getvalue()


def test_bad_ablation_arms_are_clear_errors():
    with pytest.raises(Exception, match="may change only"):
        _exp(arms={"x": {"partition": "random"}})
    with pytest.raises(Exception, match="taken by a built-in row"):
        _exp(arms={"ce": {"alpha": 0.5}})
    with pytest.raises(Exception, match="grade_epochs"):
        _exp(arms={"x": {"grade_groups": [3]}})  # one grade needs one start epoch
