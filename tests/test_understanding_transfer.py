"""`kdlab diagnose` in the transfer-set regime: the teacher trains on its own data
(`teacher.data`, all of the training split), the students on `data.train_fraction` of it."""

import json

import pytest
import yaml

from kdlab.cli.main import main

from tests.test_understanding_diagnose import TINY


@pytest.mark.slow
def test_diagnose_teacher_on_full_data_students_on_a_transfer_set(tmp_path):
    cfg = json.loads(json.dumps(TINY))
    cfg["seeds"] = [0]
    cfg["data"]["train_fraction"] = 0.5
    cfg["teacher"]["data"] = {k: v for k, v in cfg["data"].items() if k != "train_fraction"}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "report"
    assert main(["diagnose", str(path), "--store", str(tmp_path / "s"), "--out", str(out), "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    setup = res["setup"]
    # 6 classes x 30 samples, 70% train = 126 (21 a class); the students get 10 a class (stratified half).
    assert setup["teacher_train_size"] == 126 and setup["train_size"] == 60
    assert "transfer set" in (out / "report.md").read_text()
    # The teacher stage really trained on the full split, the students on the fraction.
    runs = [yaml.safe_load(p.read_text()) for p in (tmp_path / "s").glob("*/config.yaml")]
    teacher = [r for r in runs if "teacher_of" in r]
    assert len(teacher) == 1 and teacher[0]["data"]["train_fraction"] == 1.0
    students = [r for r in runs if "teacher_of" not in r]
    assert students and all(r["data"]["train_fraction"] == 0.5 for r in students)
