"""ED's grade loop stops with --stop-after-epoch and resumes exactly with --resume, via the CLI:
stopped inside grade 2, resumed, stopped inside grade 3, resumed == one uninterrupted run."""

import json
from pathlib import Path

import pytest

from helpers import cli, write_config
from kdlab.engine.checkpoint import read_checkpoint
from kdlab.store.runstore import RunStore

ED = {
    "name": "ed-resume",
    "seeds": [0],
    "device": "cpu",
    "data": {"name": "hierarchy", "batch_size": 32,
             "params": {"num_superclasses": 3, "classes_per_superclass": 2, "dim": 8, "samples_per_class": 30}},
    "teacher": {"model": {"name": "mlp", "params": {"hidden": [32]}},
                "train": {"epochs": 2, "optimizer": {"name": "adam", "lr": 0.01}}},
    "student": {"name": "mlp", "params": {"hidden": [16, 16, 16]}},
    # Adam: its moments are part of what must survive the interruption.
    "train": {"epochs": 7, "optimizer": {"name": "adam", "lr": 0.01, "weight_decay": 0.0}},
    "pipeline": {"name": "education", "groups": 3, "partition": "superclass", "grade_epochs": [0, 2, 4],
                 "replay": "interleaved", "baselines": []},
}


def _ed_row(store):
    (row,) = [r for r in RunStore(store).rows() if r["kind"] == "student"]
    return row


def _metrics(row):
    lines = Path(row["path"], "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(l).items() if k not in ("time", "train_time")} for l in lines]


def test_education_resume_is_exact(tmp_path):
    cfg = write_config(tmp_path, ED)
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    assert cli("run", cfg, "--store", full, "--quiet") == 0

    # Epoch 3 is the first of grade 2's two epochs: the TR head of grade 2 must be restored.
    assert cli("run", cfg, "--store", part, "--quiet", "--stop-after-epoch", "3") == 0
    row = _ed_row(part)
    assert row["status"] == "interrupted"
    assert [r["grade"] for r in _metrics(row)] == [1, 1, 2]
    ck = read_checkpoint(Path(row["path"], "checkpoints", "last.pt"))
    assert ck["epoch"] == 2 and any(k.startswith("model.head.") for k in ck["module"])

    # Resume, cross into grade 3, stop in its middle.
    assert cli("run", cfg, "--store", part, "--quiet", "--resume", "--stop-after-epoch", "6") == 0
    row = _ed_row(part)
    assert row["status"] == "interrupted" and [r["grade"] for r in _metrics(row)] == [1, 1, 2, 2, 3, 3]
    assert cli("run", cfg, "--store", part, "--quiet", "--resume") == 0

    a, b = _ed_row(full), _ed_row(part)
    assert b["status"] == "done" and a["id"] != b["id"]
    assert len(RunStore(part).rows()) == len(RunStore(full).rows())  # the ED run was continued, not redone
    ma, mb = _metrics(a), _metrics(b)
    assert len(ma) == 7 and ma == mb
    sa, sb = (dict(r["summary"]) for r in (a, b))
    for s in (sa, sb):
        s.pop("run_id"), s.pop("mean_epoch_time")
    assert sa == sb
    assert {"test_top1", "best_test_top1", "grade_accuracy", "best_epoch"} <= set(sa)
