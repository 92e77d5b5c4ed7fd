"""train.checkpoint_every / train.eval_every: fewer checkpoint writes and validations; a run
killed between checkpoints resumes from the last full one and ends exactly as an
uninterrupted run; the best model is chosen among the validated epochs only."""

from __future__ import annotations

from helpers import checkpoint, cli, history, same_tensors, write_config
from kdlab.config.schema import TeacherSpec, TrainSpec
from kdlab.engine.trainer import Trainer
from kdlab.store.runstore import RunStore

CE = {"methods": [{"name": "ce"}], "student": {"name": "mlp", "params": {"hidden": [16]}},
      "train": {"epochs": 5, "checkpoint_every": 2, "eval_every": 2,
                "optimizer": {"name": "adam", "lr": 0.01, "weight_decay": 0.0}}}


def _student(store) -> dict:
    (row,) = [r for r in RunStore(store).rows() if r["kind"] == "student"]
    return row


def test_a_run_killed_between_checkpoints_resumes_exactly(tmp_path, monkeypatch):
    cfg = write_config(tmp_path, **CE)
    whole, parts = str(tmp_path / "whole"), str(tmp_path / "parts")
    assert cli("run", cfg, "--store", whole, "--quiet") == 0

    epoch = Trainer.epoch

    def killed_in_the_fourth(self, e):
        if e == 3:
            raise KeyboardInterrupt
        return epoch(self, e)

    monkeypatch.setattr(Trainer, "epoch", killed_in_the_fourth)
    assert cli("run", cfg, "--store", parts, "--quiet") == 130
    run = _student(parts)
    assert len(history(run["path"])) == 3  # epochs 1-3 logged ...
    assert checkpoint(run["path"])["epoch"] == 1  # ... the last checkpoint is epoch 2's
    monkeypatch.setattr(Trainer, "epoch", epoch)
    assert cli("run", cfg, "--store", parts, "--quiet", "--resume") == 0

    a, b = _student(whole), _student(parts)
    assert history(a["path"], True) == history(b["path"], True)
    assert same_tensors(checkpoint(a["path"])["model"], checkpoint(b["path"])["model"])
    assert same_tensors(checkpoint(a["path"], "best")["model"], checkpoint(b["path"], "best")["model"])
    # Validated: epochs 2, 4 and the last; the best is one of them.
    assert [any(k.startswith("val_") for k in r) for r in history(a["path"])] == [False, True, False, True, True]
    assert a["summary"]["best_epoch"] in (1, 3, 4)


def test_checkpoints_are_written_every_n_epochs_and_at_the_last(tmp_path, monkeypatch):
    saved = []
    save = Trainer._save

    def recording(self, name, epoch, history, full):
        saved.append((name, epoch)) if name == "last" else None
        return save(self, name, epoch, history, full)

    monkeypatch.setattr(Trainer, "_save", recording)
    cfg = write_config(tmp_path, **{**CE, "train": {**CE["train"], "epochs": 7, "checkpoint_every": 3}})
    assert cli("run", cfg, "--store", str(tmp_path / "s"), "--quiet") == 0
    assert saved == [("last", 2), ("last", 5), ("last", 6)]


def test_the_defaults_leave_the_recorded_config_as_before():
    """Configs made before these settings keep their hashes (stored teachers and groups are found)."""
    assert "checkpoint_every" not in TrainSpec().model_dump() and "eval_every" not in TrainSpec().model_dump()
    assert TrainSpec(eval_every=2).model_dump()["eval_every"] == 2
    teacher = TeacherSpec(model={"name": "mlp"})
    assert "cache" not in teacher.model_dump() and TeacherSpec(model={"name": "mlp"}, cache=True).model_dump()["cache"]
