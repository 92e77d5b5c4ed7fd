"""Engine features one by one: schedules, optimisers, clipping, AMP flag, device choice,
atomic checkpoints, teachers loaded from checkpoints."""

import math
import os
from pathlib import Path

import pytest
import torch

from helpers import TINY, checkpoint, cli, history, same_tensors, write_config
from kdlab.config.schema import OptimizerSpec, ScheduleSpec, TrainSpec
from kdlab.engine.checkpoint import read_checkpoint, save_atomic
from kdlab.engine.optim import build_optimizer, lr_factor
from kdlab.store.runstore import RunStore


@pytest.mark.parametrize(
    "spec, t, expected",
    [
        (ScheduleSpec(name="constant"), 7.3, 1.0),
        (ScheduleSpec(name="step", step_size=3, gamma=0.5), 6.9, 0.25),
        (ScheduleSpec(name="multistep", milestones=[150, 180, 210], gamma=0.1), 149.9, 1.0),
        (ScheduleSpec(name="multistep", milestones=[150, 180, 210], gamma=0.1), 180.0, 0.01),
        (ScheduleSpec(name="multistep", milestones=[150, 180, 210], gamma=0.1), 239.0, 0.001),
        (ScheduleSpec(name="cosine"), 5.0, 0.5),  # half-way through 10 epochs
        (ScheduleSpec(name="cosine", min_lr_ratio=0.2), 10.0, 0.2),
        (ScheduleSpec(name="cosine", warmup_epochs=2), 1.0, 0.5),  # linear warm-up
        (ScheduleSpec(name="cosine", warmup_epochs=2), 6.0, 0.5),  # cosine over epochs 2..10
        (ScheduleSpec(name="multistep", milestones=[4], warmup_epochs=1), 0.5, 0.5),
    ],
)
def test_lr_schedules(spec, t, expected):
    total = 240 if spec.milestones == [150, 180, 210] else 10
    assert lr_factor(spec, t, total) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_optimisers(name, cls):
    p = torch.nn.Parameter(torch.ones(3))
    opt = build_optimizer([p], OptimizerSpec(name=name, lr=0.1, weight_decay=0.01))
    assert isinstance(opt, cls) and opt.param_groups[0]["weight_decay"] == 0.01
    (p**2).sum().backward()
    opt.step()
    assert (p < 1).all()


def _student_delta(tmp_path, store, **train):
    tmp_path.mkdir()
    cfg = write_config(tmp_path, methods=[{"name": "ce"}],
                       train={"epochs": 1, "optimizer": {"name": "sgd", "lr": 0.5, "momentum": 0.0,
                                                         "weight_decay": 0.0}, **train})
    assert cli("run", cfg, "--store", store, "--quiet") == 0
    (row,) = RunStore(store).rows()
    final = read_checkpoint(Path(row["path"]) / "checkpoints" / "last.pt")["model"]
    from kdlab.seeding import seed_everything
    from kdlab.registry import MODELS

    seed_everything(0)  # the initial weights of seed 0, as the run built them
    init = MODELS.get("mlp").obj(num_classes=10, input_shape=(1, 8, 8), hidden=[16]).state_dict()
    return math.sqrt(sum(float(((final[k] - init[k]) ** 2).sum()) for k in init))


def test_grad_clip_limits_updates(tmp_path):
    free = _student_delta(tmp_path / "a", str(tmp_path / "a" / "s"))
    clipped = _student_delta(tmp_path / "b", str(tmp_path / "b" / "s"), grad_clip=1e-4)
    steps = math.ceil(1257 / 64) + 1
    assert clipped <= 0.5 * 1e-4 * steps * 1.01  # every step moves by at most lr * clip
    assert free > 100 * clipped


def _amp_run(tmp_path, name, *overrides, resume=False, stop=None):
    """A 2-epoch CE run with grad clipping (so an un-unscaled gradient would be clipped wrongly)."""
    cfg = write_config(tmp_path, name=f"{name}.yaml", methods=[{"name": "ce"}],
                       train={**TINY["train"], "epochs": 2, "grad_clip": 1.0})
    store = str(tmp_path / name)
    args = ["run", cfg, "--store", store, "--quiet", *overrides]
    args += ["--resume"] if resume else []
    args += ["--stop-after-epoch", str(stop)] if stop else []
    assert cli(*args) == 0
    (row,) = RunStore(store).rows()
    return row


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU fallback of train.amp")
def test_amp_flag_on_cpu_warns_and_changes_nothing(tmp_path):
    with pytest.warns(UserWarning, match="CUDA"):
        amp = _amp_run(tmp_path, "amp", "train.amp=true", "train.amp_dtype=fp16")
    fp32 = _amp_run(tmp_path, "fp32")
    assert history(amp["path"], timeless=True) == history(fp32["path"], timeless=True)
    assert same_tensors(checkpoint(amp["path"])["model"], checkpoint(fp32["path"])["model"])


@pytest.fixture
def force_scaler(monkeypatch):
    """Makes the trainer take its fp16 GradScaler path on the CPU, in float32 (no autocast).
    The one place these tests reach into the engine: `Trainer.scaler`, made in __init__."""
    from kdlab.engine.trainer import Trainer

    made: list = []
    init = Trainer.__init__

    def install(**scaler_args):
        def with_scaler(self, *args, **kwargs):
            init(self, *args, **kwargs)
            self.scaler = torch.amp.GradScaler("cpu", **scaler_args)
            made.append(self.scaler)

        monkeypatch.setattr(Trainer, "__init__", with_scaler)
        return made

    return install


STEPS_PER_EPOCH = math.ceil(1257 / 64)  # digits' training split, batch 64


def test_grad_scaler_path_equals_float32(tmp_path, force_scaler):
    """Scaling by a power of two and unscaling is exact, so the scaler path must give the
    float32 run bit for bit; with grad_clip set, clipping before unscaling would not."""
    fp32 = _amp_run(tmp_path, "fp32")
    made = force_scaler(init_scale=2.0**16, growth_interval=1)
    scaled = _amp_run(tmp_path, "scaled")
    (scaler,) = made
    assert scaler.get_scale() == 2.0 ** (16 + 2 * STEPS_PER_EPOCH)  # it ran every step, skipped none
    assert history(scaled["path"], timeless=True) == history(fp32["path"], timeless=True)
    assert same_tensors(checkpoint(scaled["path"])["model"], checkpoint(fp32["path"])["model"])


def test_grad_scaler_state_survives_resume(tmp_path, force_scaler):
    """With the loss weighted by 1e15 the scaled gradients overflow from a scale of about 2^79
    (Adam's steps do not depend on the weight). Starting at 2^90 the scaler skips 12 steps and
    backs off, then grows again every 4 steps and meets overflows again. A resumed run must continue
    from the saved scale, not skip the first steps of its epoch again."""
    made = force_scaler(init_scale=2.0**90, growth_interval=4)
    heavy = "methods=[{name: ce, weight: 1.0e+15}]"
    full = _amp_run(tmp_path, "full", heavy)
    assert made[0].get_scale() < 2.0**80  # it met overflows and backed off
    _amp_run(tmp_path, "part", heavy, stop=1)
    part = _amp_run(tmp_path, "part", heavy, resume=True)
    assert history(full["path"], timeless=True) == history(part["path"], timeless=True)
    assert same_tensors(checkpoint(full["path"])["model"], checkpoint(part["path"])["model"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without CUDA")
def test_cuda_requested_without_cuda_is_a_clear_error(tmp_path, store, capsys):
    assert cli("run", write_config(tmp_path), "--store", store, "--device", "cuda") == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_device_auto_picks_cpu_here():
    from kdlab.stages.context import resolve_device

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


def test_atomic_write_keeps_the_old_file_when_saving_fails(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    save_atomic({"format": "x", "w": torch.ones(2)}, path)
    before = path.read_bytes()

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_atomic({"w": torch.zeros(2)}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ck.pt"]  # no temp file left behind


def test_teacher_from_checkpoint_is_loaded_not_trained(tmp_path, capsys):
    store = str(tmp_path / "s")
    assert cli("run", write_config(tmp_path), "--store", store, "--quiet") == 0
    (teacher,) = [r for r in RunStore(store).rows() if r["kind"] == "teacher"]
    best = Path(teacher["path"]) / "checkpoints" / "best.pt"
    capsys.readouterr()
    # A kdlab checkpoint and a plain state dict both work as teacher.checkpoint.
    plain = tmp_path / "plain.pt"
    torch.save(read_checkpoint(best)["model"], plain)
    for i, ck in enumerate([best, plain]):
        other = str(tmp_path / f"other{i}")
        cfg = write_config(tmp_path, name=f"c{i}.yaml",
                           teacher={"model": TINY["teacher"]["model"], "checkpoint": str(ck)})
        assert cli("run", cfg, "--store", other, "--quiet") == 0
        rows = RunStore(other).rows()
        assert [r["kind"] for r in rows] == ["student"]  # no teacher was trained
    out = capsys.readouterr().out
    assert out.count(f"test top1 {teacher['summary']['best_test_top1']:.2f}") == 2  # the same teacher
