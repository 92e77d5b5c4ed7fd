"""Every kind of bad input gets one or two clear lines, exit code 2, and no traceback."""

import os
import subprocess
import sys

import pytest
import torch

from helpers import assert_clear, run_bad, write_config
from kdlab.models.mlp import mlp


def test_malformed_yaml(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("data: {name: digits\nstudent: [\n")
    assert_clear(*run_bad(capsys, "validate", p), "malformed YAML", "line")


def test_executable_tags_are_rejected(tmp_path, capsys):
    p = tmp_path / "tag.yaml"
    p.write_text("data: !!python/object/apply:os.system ['echo hi']\n")
    assert_clear(*run_bad(capsys, "validate", p), "malformed YAML")


@pytest.mark.parametrize(
    "override, needles",
    [
        ("student.name=resnet2O", ["unknown model 'resnet2O'", "resnet20"]),
        ("data.name=digit", ["unknown dataset 'digit'", "digits"]),
        ("methods.1.name=kdd", ["unknown method 'kdd'", "kd"]),
        ("methods.1.tau=abc", ["methods.1", "tau"]),
        ("methods.1.tau=-1", ["tau", "greater than 0"]),
        ("methods.1.temperature=3", ["no hyper-parameter 'temperature'"]),
        ("train.epochs=0", ["train.epochs"]),
        ("train.optimizer.name=lion", ["train.optimizer.name"]),
        ("student.params.hiddn=[8]", ["no parameter 'hiddn'", "hidden"]),
        ("teacher.model.num_classes=7", ["teacher", "classes"]),
        ("device=tpu", ["device"]),
    ],
)
def test_bad_config_values(tmp_path, capsys, override, needles):
    assert_clear(*run_bad(capsys, "validate", write_config(tmp_path), override), *needles)


def test_missing_data_path(tmp_path, capsys, store):
    cfg = write_config(tmp_path, data={"name": "npz", "params": {"path": str(tmp_path / "nope.npz")}})
    assert_clear(*run_bad(capsys, "run", cfg, "--store", store, "--quiet"), "nope.npz")


def _ckpt_config(tmp_path, path):
    return write_config(tmp_path, teacher={"model": {"name": "mlp", "params": {"hidden": [64]}}, "checkpoint": str(path)})


def test_checkpoint_of_another_architecture(tmp_path, capsys, store):
    other = tmp_path / "other.pt"
    torch.save(mlp(num_classes=10, input_shape=(1, 8, 8), hidden=[32, 32]).state_dict(), other)
    assert_clear(*run_bad(capsys, "run", _ckpt_config(tmp_path, other), "--store", store, "--quiet"),
                 "does not fit the teacher")


def test_checkpoint_with_other_class_count(tmp_path, capsys, store):
    other = tmp_path / "other.pt"
    torch.save(mlp(num_classes=3, input_shape=(1, 8, 8), hidden=[64]).state_dict(), other)
    assert_clear(*run_bad(capsys, "run", _ckpt_config(tmp_path, other), "--store", store, "--quiet"),
                 "predicts 3 classes")


def test_truncated_checkpoint(tmp_path, capsys, store):
    good = tmp_path / "good.pt"
    torch.save(mlp(num_classes=10, input_shape=(1, 8, 8), hidden=[64]).state_dict(), good)
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert_clear(*run_bad(capsys, "run", _ckpt_config(tmp_path, bad), "--store", store, "--quiet"), "cannot be read")


def test_corrupt_checkpoint(tmp_path, capsys, store):
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(os.urandom(2048))
    assert_clear(*run_bad(capsys, "run", _ckpt_config(tmp_path, bad), "--store", store, "--quiet"), "cannot be read")


def test_pickled_object_is_not_loaded(tmp_path, capsys, store):
    import argparse

    bad = tmp_path / "evil.pt"  # a pickle of an arbitrary object, not tensors
    torch.save({"model": argparse.Namespace(x=1)}, bad)
    assert_clear(*run_bad(capsys, "run", _ckpt_config(tmp_path, bad), "--store", store, "--quiet"), "cannot be read")


def test_unknown_layer_path_lists_close_paths():
    from kdlab.errors import KdlabError
    from kdlab.knowledge.taps import FeatureTap
    from kdlab.registry import MODELS

    model = MODELS.get("resnet20").obj(num_classes=10, input_shape=(3, 32, 32))
    with pytest.raises(KdlabError) as e:
        FeatureTap(model, ["layer3.1.conv3"], "student")
    assert "layer3.1.conv3" in str(e.value) and "layer3.1.conv2" in str(e.value)
    tap = FeatureTap(model, ["layer3.1.conv2", "hint:-1"], "student")
    model(torch.zeros(2, 3, 32, 32))
    feats = tap.pop()
    assert feats["layer3.1.conv2"].shape == (2, 64, 8, 8) and feats["hint:-1"].shape == (2, 64, 8, 8)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, capsys, store):
    import torch.nn.functional as F

    from kdlab.engine.checkpoint import read_checkpoint
    from kdlab.methods.base import Method, register_method
    from kdlab.registry import METHODS
    from kdlab.store.runstore import RunStore

    if "_nan_from_epoch_2" not in METHODS:

        @register_method("_nan_from_epoch_2", "test only: CE that turns non-finite in the second epoch")
        class NanLater(Method):
            uses_teacher = False

            def forward(self, batch, student, teachers):
                ce = F.cross_entropy(student.logits, batch["y"])
                return {"ce": ce * float("nan") if self.epoch >= 1 else ce}

    cfg = write_config(tmp_path, methods=[{"name": "_nan_from_epoch_2"}])
    code, lines, err = run_bad(capsys, "run", cfg, "--store", store, "--quiet")
    assert_clear(code, lines, err, "non-finite", "epoch 2", "last good checkpoint")
    (row,) = RunStore(store).rows()
    assert row["status"] == "failed"
    ck = read_checkpoint(os.path.join(row["path"], "checkpoints", "last.pt"))
    assert ck["epoch"] == 0  # the good epoch's checkpoint was not overwritten
    assert all(torch.isfinite(v).all() for v in ck["model"].values())


def test_console_script_exit_code_and_debug(tmp_path):
    cfg = write_config(tmp_path, student={"name": "resnet2O"})
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    r = subprocess.run([sys.executable, "-m", "kdlab", "validate", cfg], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "resnet20" in r.stderr
    r = subprocess.run([sys.executable, "-m", "kdlab", "--debug", "validate", cfg], capture_output=True, text=True, env=env)
    assert "Traceback" in r.stderr


def test_wrong_layer_path_fails_before_any_training(tmp_path, capsys, store):
    from kdlab.store.runstore import RunStore

    cfg = write_config(
        tmp_path,
        teacher={"model": {"name": "cnn2d"}},
        student={"name": "cnn2d", "params": {"channels": [8, 16, 32]}},
        methods=[{"name": "ce"}, {"name": "fitnet", "student_layers": ["layr2.1"], "teacher_layers": ["hint:1"]}],
    )
    code, lines, err = run_bad(capsys, "run", cfg, "--store", store, "--quiet")
    assert_clear(code, lines, err, "student", "layr2.1", "Close paths: layer2.1")
    assert RunStore(store).rows() == []  # not even the teacher was trained
