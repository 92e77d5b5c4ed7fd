"""The CIFAR-100 benchmark configs (configs/cifar100/): every one validates, matches its
generator, and runs a few steps through the real runner on a tiny fake CIFAR-100 folder."""

from __future__ import annotations

import importlib.util
import math
import pickle
import time
from pathlib import Path

import numpy as np
import pytest

from kdlab.config.load import load_config, read_yaml
from kdlab.stages.runner import run_experiment
from kdlab.store.runstore import RunStore

ROOT = Path(__file__).resolve().parents[1] / "configs" / "cifar100"
CONFIGS = sorted(ROOT.glob("*/*.yaml"))
PAIRS = sorted({p.parent.name for p in CONFIGS})
METHODS = ["ce", "kd", "dkd", "dist", "ctkd", "fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "ab", "ft", "fsp",
           "nst", "crd", "reviewkd", "ofd"]


def _generator():
    spec = importlib.util.spec_from_file_location("cifar100_generate", ROOT / "generate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def write_fake_cifar100(root: Path, train_classes: list[int], n_test: int = 4) -> Path:
    """The python-pickle layout of CIFAR-100 (train, test, meta) with a handful of random
    32x32 images: one training image per listed class, so every class is distinct (CRD
    draws its negatives from other classes)."""
    rng = np.random.default_rng(0)
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    test_classes = [(7 * i + 3) % 100 for i in range(n_test)]
    for name, fine in (("train", train_classes), ("test", test_classes)):
        data = rng.integers(0, 256, (len(fine), 3072), dtype=np.uint8)
        with open(d / name, "wb") as f:
            pickle.dump({b"data": data, b"fine_labels": list(fine), b"coarse_labels": [c // 5 for c in fine]}, f)
    with open(d / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"f{j}".encode() for j in range(100)],
                     b"coarse_label_names": [f"c{j}".encode() for j in range(20)]}, f)
    return d


def test_configs_cover_every_pair_and_method():
    assert PAIRS == sorted(["resnet32x4_resnet8x4", "wrn_40_2_wrn_16_2", "resnet56_resnet20", "vgg13_vgg8",
                            "resnet50_mobilenetv2"])
    for pair in PAIRS:
        have = {p.stem for p in (ROOT / pair).glob("*.yaml")}
        expected = set(METHODS) | {"teacher"}
        if pair == "resnet50_mobilenetv2":
            expected.discard("fsp")  # unequal widths, see configs/cifar100/README.md
        assert have == expected, pair


def test_configs_match_generator():
    gen = _generator().all_configs()
    assert sorted(gen) == CONFIGS
    for path, text in gen.items():
        assert path.read_text() == text, f"{path} is stale: run python configs/cifar100/generate.py"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_config_validates_with_standard_recipe(path):
    exp = load_config(path)
    assert exp.seeds == [0, 1, 2] and exp.data.name == "cifar100" and exp.data.batch_size == 64
    # a relative path is read from the config file's folder
    assert exp.data.params["path"] == str(path.parent / "data" / "cifar-100-python")
    light = exp.student.name == "mobilenetv2"
    for train in [exp.train] + ([exp.teacher.train] if exp.teacher else []):
        assert train.epochs == 240 and train.optimizer.name == "sgd"
        assert train.optimizer.momentum == 0.9 and train.optimizer.weight_decay == 5e-4
        assert train.schedule.name == "multistep" and train.schedule.milestones == [150, 180, 210]
        assert train.schedule.gamma == 0.1
    assert exp.train.optimizer.lr == (0.01 if light else 0.05)
    if exp.teacher is not None:
        assert exp.teacher.train.optimizer.lr == 0.05 and exp.teacher.checkpoint is None
    names = [m.name for m in exp.methods]
    assert names[0] == "ce"
    if path.stem in ("ce", "teacher"):
        assert names == ["ce"] and exp.teacher is None
    else:
        assert names == ["ce", path.stem] and exp.teacher is not None
        teacher, student = path.parent.name.split("_", 1) if "wrn" not in path.parent.name else (
            "wrn_40_2", "wrn_16_2")
        assert (exp.teacher.model.name, exp.student.name) == (teacher, student)
    # the user's data path goes in by override
    moved = load_config(path, ["data.params.path=/elsewhere/cifar-100-python"])
    assert moved.data.params["path"] == "/elsewhere/cifar-100-python"


def _overrides(path: Path, data_dir: Path, has_teacher: bool) -> list[str]:
    """Identical for every config of a pair (so its teacher is trained once and then reused
    from the store), plus per-method memory shrinks."""
    out = [f"data.params.path={data_dir}", "seeds=[0]", "device=cpu", "train.epochs=1", "data.batch_size=4",
           "data.eval_batch_size=64"]
    if has_teacher:
        out.append("teacher.train.epochs=1")
    if path.stem == "crd":
        out.append("methods.1.nce_k=4")  # the default 16384 negatives > 8 training images
    return out


@pytest.mark.slow
def test_every_config_runs_a_few_steps(tmp_path):
    data_dir = write_fake_cifar100(tmp_path / "data", train_classes=[13 * i % 100 for i in range(8)])
    store = tmp_path / "runs"
    started, times = time.perf_counter(), {}
    for path in CONFIGS:
        t0 = time.perf_counter()
        has_teacher = "teacher" in read_yaml(path)
        exp = load_config(path, _overrides(path, data_dir, has_teacher))
        result = run_experiment(exp, store=str(store), progress=False)
        (summary,) = result.results["main"]
        assert math.isfinite(summary["test_top1"]), path
        times[f"{path.parent.name}/{path.stem}"] = time.perf_counter() - t0
    rows = RunStore(str(store)).rows()
    teachers = [r for r in rows if r["kind"] == "teacher"]
    # one teacher per pair, trained once, reused by the pair's 17-18 distillation configs
    assert len(teachers) == len(PAIRS) and all(r["status"] == "done" for r in teachers)
    students = [r for r in rows if r["kind"] == "student"]
    assert len(students) == len(CONFIGS) and all(r["status"] == "done" for r in students)
    slowest = sorted(times.items(), key=lambda kv: -kv[1])[:5]
    print(f"\n{len(CONFIGS)} configs in {time.perf_counter() - started:.1f} s; slowest: {slowest}")
