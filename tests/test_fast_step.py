"""The faster step (kdlab.engine.fast_step): train.compile gives eager's metrics within float
tolerance, resumes exactly, and writes the same checkpoints as eager (no `_orig_mod.` names,
interchangeable both ways), and under torchrun (compiled inside DDP) matches one process;
without a C++ compiler it is refused before training in one line; train.channels_last puts
convolution weights and images in NHWC (and leaves an MLP alone); train.amp with bf16 runs
the step under CPU autocast without loss scaling."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import TINY, checkpoint, cli, history, same_tensors, single_and_two_process_runs, write_config
from kdlab.config.schema import MethodSpec, OptimizerSpec, ScheduleSpec, TrainSpec
from kdlab.data.base import DataBundle, Split
from kdlab.engine.fast_step import check_compile
from kdlab.engine.trainer import Trainer, TrainSetup
from kdlab.registry import MODELS
from kdlab.seeding import seed_everything
from kdlab.stages.building import build_methods, method_context
from kdlab.store.runstore import RunStore
from kdlab.tasks.classification import Classification

TRAIN = {**TINY["train"], "epochs": 2}
# The teacher trains eagerly (its own train section): only the student's step is compiled,
# which keeps these runs to one compiled module. One epoch: --stop-after-epoch 1 stops the student.
TEACHER = {**TINY["teacher"], "train": {**TRAIN, "epochs": 1}}


def _run(tmp_path, name, *overrides, stop=None, resume=False, train=None):
    cfg = write_config(tmp_path, name=f"{name}.yaml", teacher=TEACHER, train={**TRAIN, **(train or {})})
    store = str(tmp_path / name)
    args = ["run", cfg, "--store", store, "--quiet", *overrides]
    args += ["--resume"] if resume else []
    args += ["--stop-after-epoch", str(stop)] if stop else []
    assert cli(*args) == 0
    return next(r for r in RunStore(store).rows() if r["kind"] == "student")


def _close(a: list[dict], b: list[dict], rel: float) -> None:
    assert [sorted(r) for r in a] == [sorted(r) for r in b]
    for ra, rb in zip(a, b):
        for k in ra:
            assert rb[k] == pytest.approx(ra[k], rel=rel, abs=1e-6), (k, ra[k], rb[k])


def _compiled_graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


@pytest.mark.slow
def test_a_compiled_run_matches_eager_and_resumes_exactly(tmp_path):
    check_compile(torch.device("cpu"))  # the probe's own graph is counted before `before`
    eager = _run(tmp_path, "eager")
    before = _compiled_graphs()
    full = _run(tmp_path, "full", train={"compile": True})
    assert _compiled_graphs() > before  # the step really ran compiled
    # Same math, other kernels: equal up to float rounding (seen: rel 4e-7).
    _close(history(eager["path"], timeless=True), history(full["path"], timeless=True), rel=1e-5)
    # Stopped after epoch 1 and resumed: the very figures and weights of the uninterrupted run.
    _run(tmp_path, "part", stop=1, train={"compile": True})
    part = _run(tmp_path, "part", resume=True, train={"compile": True})
    assert history(part["path"], timeless=True) == history(full["path"], timeless=True)
    assert same_tensors(checkpoint(part["path"])["model"], checkpoint(full["path"])["model"])
    # Checkpoints hold the module's own names: a compiled one is an eager one.
    for name in ("model", "module", "best_model"):
        ck_c, ck_e = checkpoint(full["path"])[name], checkpoint(eager["path"])[name]
        assert ck_c.keys() == ck_e.keys() and not any("_orig_mod" in k for k in ck_c), name


@pytest.mark.slow
def test_compiled_and_eager_checkpoints_resume_each_other(tmp_path):
    """Epoch 1 of one kind, epoch 2 of the other (the `last` checkpoints of runs stopped after
    epoch 1 swapped): each loads the other's state strictly (a `_orig_mod.` name would fail)
    and ends where an uninterrupted run ends, within float tolerance."""
    full = _run(tmp_path, "full")
    runs = {}
    for name, train in (("eager", {}), ("compiled", {"compile": True})):
        runs[name] = (_run(tmp_path, name, stop=1, train=train), train)
    swap = {n: Path(r["path"], "checkpoints", "last.pt") for n, (r, _) in runs.items()}
    held = swap["eager"].read_bytes()
    shutil.copyfile(swap["compiled"], swap["eager"])
    swap["compiled"].write_bytes(held)
    for name, (_, train) in runs.items():
        done = _run(tmp_path, name, resume=True, train=train)
        _close(history(full["path"], timeless=True), history(done["path"], timeless=True), rel=1e-5)


@pytest.mark.slow
def test_train_compile_without_a_compiler_is_refused_before_training(tmp_path):
    """A real probe, in a fresh process with no C++ compiler and no kernel cache."""
    cfg = write_config(tmp_path, teacher=TEACHER, train={**TRAIN, "compile": True})
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1", "CXX": str(tmp_path / "no-such-g++"),
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"), "TORCHINDUCTOR_FX_GRAPH_CACHE": "0"}
    store = tmp_path / "store"
    r = subprocess.run([sys.executable, "-m", "kdlab", "run", cfg, "--store", str(store), "--quiet"],
                       capture_output=True, text=True, env=env, timeout=600)
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert r.returncode == 2, r.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "train.compile" in r.stderr and "C++ compiler" in r.stderr
    assert not RunStore(str(store)).rows()  # refused before the teacher trained


# ---------------------------------------------------------------- engine level: channels_last, bf16
def _trainer(train: TrainSpec, student: str = "cnn2d") -> tuple[Trainer, DataBundle]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 3, 8, 8, generator=g), torch.randint(0, 4, (96,), generator=g)
    data = DataBundle(Split({"x": x, "y": y}), Split({"x": x[:32], "y": y[:32]}), Split({"x": x[:32], "y": y[:32]}),
                      4, (3, 8, 8))
    seed_everything(0)
    params = {"channels": [4, 8]} if student == "cnn2d" else {"hidden": [8]}
    model = MODELS.get(student).obj(num_classes=4, input_shape=(3, 8, 8), **params)
    task = Classification(data)
    ms, ws = build_methods([MethodSpec(name="ce")], method_context(data, model, [], 1, torch.device("cpu"), task))
    return Trainer(TrainSetup(student=model, methods=ms, weights=ws, data=data, task=task, train=train, batch_size=32,
                              seed=0, device=torch.device("cpu"))), data


def _spec(**kw) -> TrainSpec:
    return TrainSpec(epochs=1, optimizer=OptimizerSpec(name="sgd", lr=0.05), schedule=ScheduleSpec(name="constant"), **kw)


def _first_conv(model) -> torch.nn.Module:
    return next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def _in_steps(model, seen: list, what):
    """Record what(output or input) of the first convolution in training steps only (not in
    the methods' no-grad sizing pass nor in evaluation)."""
    def hook(m, args, out):
        if torch.is_grad_enabled():
            seen.append(what(args[0], out))
    return _first_conv(model).register_forward_hook(hook)


@pytest.mark.parametrize("on", [False, True])
def test_channels_last_puts_convolutions_and_images_in_nhwc(on):
    trainer, _ = _trainer(_spec(channels_last=on))
    seen: list = []
    hook = _in_steps(trainer.student, seen, lambda x, out: x)
    res = trainer.fit()
    hook.remove()
    nhwc = torch.channels_last
    assert len(seen) == 3  # the three training steps
    assert all(x.is_contiguous(memory_format=nhwc) == on and x.is_contiguous() != on for x in seen)
    w = _first_conv(trainer.student).weight
    assert w.is_contiguous(memory_format=nhwc) == on and w.is_contiguous() != on
    # The numbers do not depend on the layout, up to float summation order.
    other, _ = _trainer(_spec(channels_last=not on))
    assert other.fit().history[0]["train_total"] == pytest.approx(res.history[0]["train_total"], rel=1e-5)


def test_channels_last_leaves_a_model_without_convolutions_alone():
    """No NHWC copies of the images for a student that would flatten them back: the same
    inputs, the same numbers bit for bit."""
    trainer, _ = _trainer(_spec(channels_last=True), student="mlp")
    seen: list = []
    hook = trainer.student.register_forward_pre_hook(lambda m, args: seen.append(args[0]) if torch.is_grad_enabled() else None)
    nhwc = trainer.fit().history[0]["train_total"]
    hook.remove()
    assert len(seen) == 3 and all(x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last) for x in seen)
    eager, _ = _trainer(_spec(), student="mlp")
    assert nhwc == eager.fit().history[0]["train_total"]


def test_bf16_autocast_runs_the_cpu_step_in_bf16_without_loss_scaling():
    trainer, _ = _trainer(_spec(amp=True, amp_dtype="bf16"))
    assert not trainer.scaler.is_enabled()
    outs: list = []
    hook = _in_steps(trainer.student, outs, lambda x, out: out.dtype)
    bf16 = trainer.fit().history[0]["train_total"]
    hook.remove()
    assert outs == [torch.bfloat16] * 3  # the step's convolutions ran in bf16
    fp32, _ = _trainer(_spec())
    f = fp32.fit().history[0]["train_total"]
    assert bf16 != f and bf16 == pytest.approx(f, rel=2e-2)  # bf16 rounding: close, not equal
    # Parameters stay float32 (autocast casts per op); the checkpoint is a float32 one.
    assert all(p.dtype == torch.float32 for p in trainer.student.parameters())


@pytest.mark.slow
@pytest.mark.ddp
def test_compiled_ddp_matches_one_compiled_process(tmp_path):
    """Compiled inside DDP (kdlab.engine.fast_step): two CPU processes train the single
    process's model, as eager DDP does (tests/test_ddp.py), up to float summation order."""
    cfg = write_config(tmp_path, teacher=TEACHER, train={"epochs": 2, "optimizer": {"name": "sgd", "lr": 0.1},
                                                         "compile": True})
    single, multi = single_and_two_process_runs(tmp_path, cfg)
    a, b = (next(r for r in RunStore(s).rows() if r["kind"] == "student") for s in (single, multi))
    assert b["summary"]["test_loss"] == pytest.approx(a["summary"]["test_loss"], rel=1e-3)
    for ea, eb in zip(history(a["path"]), history(b["path"]), strict=True):
        assert eb["train_total"] == pytest.approx(ea["train_total"], rel=1e-3)
