"""Offline teacher logits for language models: `kdlab cache-teacher` stores the teacher's top-k
(or sampled) distributions once; `kdlab run` then trains from them without running the teacher;
with k = V it equals online distillation exactly; a cache made from another teacher, tokenizer,
length or mode is refused; a build killed midway resumes to the uninterrupted cache; a teacher
held in bf16 teaches within bf16 rounding of the float32 one."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import assert_clear, assert_pinned, checkpoint, cli, history, run_bad, same_tensors, write_config
from kdlab.config.schema import DataSpec, ModelSpec
from kdlab.models.build import build_model
from kdlab.stages.building import load_data
from kdlab.store import tensorcache
from kdlab.store.runstore import RunStore

ENV = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
DATA = {"name": "pydoc", "params": {"seq_len": 12, "max_tokens": 3000, "max_vocab": 100, "split": "contiguous"}, "batch_size": 16,
        "eval_batch_size": 64}
V = 100
TEACHER = {"name": "transformer_lm", "params": {"d_model": 32, "nhead": 2, "layers": 1, "ff": 64, "dropout": 0.0, "max_len": 24}}
STUDENT = {"name": "transformer_lm", "params": {"d_model": 16, "nhead": 2, "layers": 1, "ff": 32, "dropout": 0.0, "max_len": 24}}


def make_teacher(path: Path, seed: int) -> str:
    """A teacher checkpoint (random weights scaled up, so its distributions are far from flat)."""
    data = load_data(DataSpec(**DATA))
    torch.manual_seed(seed)
    model = build_model(ModelSpec(**TEACHER), data, "teacher")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    torch.save(model.state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    d = tmp_path_factory.mktemp("teachers")
    return make_teacher(d / "a.pt", 0), make_teacher(d / "b.pt", 1)


def config(tmp_path, teacher: str, cache=None, name="exp.yaml", methods=None, **teacher_extra) -> str:
    t = {"model": TEACHER, "checkpoint": teacher, **teacher_extra, **({"cache": cache} if cache is not None else {})}
    cfg = {"name": "lmcache", "seeds": [0], "device": "cpu", "data": copy.deepcopy(DATA), "teacher": t,
           "student": STUDENT, "methods": methods or [{"name": "fkl"}],
           "train": {"epochs": 2, "optimizer": {"name": "adam", "lr": 0.005, "weight_decay": 0.0}}}
    return write_config(tmp_path, cfg, name)


def student_run(store) -> dict:
    (row,) = [r for r in RunStore(store).rows() if r["kind"] == "student"]
    return row


def no_teacher(monkeypatch):
    """Any forward pass of the teacher in a training step or a cache build fails the run."""
    def refuse(*a, **k):
        raise AssertionError("the teacher ran")

    monkeypatch.setattr("kdlab.engine.trainer.teacher_outputs", refuse)
    monkeypatch.setattr("kdlab.stages.teacher_cache.teacher_outputs", refuse)


def test_a_top_v_cache_trains_exactly_as_online_and_the_teacher_does_not_run(tmp_path, teachers, monkeypatch, capsys):
    online, cached = str(tmp_path / "online"), str(tmp_path / "cached")
    assert cli("run", config(tmp_path, teachers[0]), "--store", online, "--quiet") == 0
    cfg = config(tmp_path, teachers[0], {"topk": V}, "cached.yaml")
    assert cli("cache-teacher", cfg, "--store", cached, "--quiet") == 0
    assert "top-100 logits + tail mass of 2,388 tokens (199 rows)" in capsys.readouterr().out
    with monkeypatch.context() as m:
        no_teacher(m)
        assert cli("run", cfg, "--store", cached, "--quiet") == 0
    a, b = student_run(online), student_run(cached)
    assert history(a["path"], timeless=True) == history(b["path"], timeless=True)
    assert same_tensors(checkpoint(a["path"])["model"], checkpoint(b["path"])["model"])
    assert_pinned(b["summary"], {"test_ppl": 127.37914, "test_loss": 4.84717})


@pytest.mark.parametrize("cache, pins", [
    ({"topk": 8}, {"test_ppl": 143.27177}),
    ({"sampled": 8}, {"test_ppl": 129.25697}),
])
def test_top_k_and_sampled_caches_train_from_what_they_hold(tmp_path, teachers, monkeypatch, cache, pins):
    """k < V: the student learns from the k + 1 buckets (top-k) or the draws (sampled), so its
    figures move away from the online run's (pinned); the teacher never runs in training."""
    store = str(tmp_path / "s")
    cfg = config(tmp_path, teachers[0], cache)
    assert cli("cache-teacher", cfg, "--store", store, "--quiet") == 0
    with monkeypatch.context() as m:
        no_teacher(m)
        assert cli("run", cfg, "--store", store, "--quiet") == 0
    summary = student_run(store)["summary"]
    assert_pinned(summary, pins)
    (path,) = Path(store, "cache").iterdir()
    fields = json.loads((path / tensorcache.MANIFEST).read_text())["fields"]
    k = cache.get("topk") or cache["sampled"]
    want = {"logits.values": [12, k], "logits.indices": [12, k], "logits.rest": [12]} if "topk" in cache else \
        {"logits.ids": [12, k], "logits.entropy": [12]}
    assert {f: v["shape"] for f, v in fields.items()} == want


@pytest.mark.parametrize("change, named", [
    ({"teacher": "b"}, "teacher_weights"),
    ({"data": {"lowercase": False}}, "tokenizer"),
    ({"data": {"seq_len": 10}}, "max_length"),
    ({"cache": {"sampled": 8}}, "mode"),
])
def test_a_cache_made_from_another_teacher_tokenizer_length_or_mode_is_refused(tmp_path, teachers, capsys, change, named):
    where = str(tmp_path / "shared")
    store = str(tmp_path / "s")
    first = config(tmp_path, teachers[0], {"topk": 8, "path": where}, "first.yaml")
    assert cli("cache-teacher", first, "--store", store, "--quiet") == 0
    other = json.loads(json.dumps({"teacher": teachers[1 if change.get("teacher") else 0],
                                   "cache": {**change.get("cache", {"topk": 8}), "path": where}}))
    cfg = config(tmp_path, other["teacher"], other["cache"], "other.yaml")
    if "data" in change:
        import yaml

        d = yaml.safe_load(Path(cfg).read_text())
        d["data"]["params"].update(change["data"])
        Path(cfg).write_text(yaml.safe_dump(d))
    for command in ("cache-teacher", "run"):
        code, lines, err = run_bad(capsys, command, cfg, "--store", store, "--quiet")
        assert_clear(code, lines, err, where, named, "delete it")


BUILD = textwrap.dedent("""
    import sys, time
    import kdlab.stages.teacher_cache as tc
    from kdlab.cli.main import main
    tc.SHARD_BATCHES = 1  # one build batch per shard: 13 shards
    calls, original = [], tc.teacher_outputs
    def counted(*a, **k):
        calls.append(1)
        time.sleep(float(sys.argv[3]))
        return original(*a, **k)
    tc.teacher_outputs = counted
    code = main(["cache-teacher", sys.argv[1], "--store", sys.argv[2], "--quiet"])
    print("calls", len(calls))
    sys.exit(code)
""")


def test_a_cache_build_killed_midway_resumes_to_the_uninterrupted_cache(tmp_path, teachers):
    cfg = config(tmp_path, teachers[0], {"sampled": 8})  # seeded draws: resumed shards draw the same ids
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    r = subprocess.run([sys.executable, "-c", BUILD, cfg, str(whole), "0"], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    proc = subprocess.Popen([sys.executable, "-c", BUILD, cfg, str(parts), "0.3"], env=ENV)
    t0 = time.time()
    while len(list(parts.glob("cache/*/shards/*.done"))) < 2:
        assert time.time() - t0 < 120 and proc.poll() is None
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(parts.glob("cache/*/shards/*.done")))
    assert 2 <= done < 13
    r = subprocess.run([sys.executable, "-c", BUILD, cfg, str(parts), "0"], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"calls {13 - done}" in r.stdout  # only the shards the killed build had not finished
    (a,), (b,) = list(whole.glob("cache/*")), list(parts.glob("cache/*"))
    assert a.name == b.name
    ca, cb = tensorcache.TensorCache.open(a), tensorcache.TensorCache.open(b)
    for field in ca.arrays:
        assert np.array_equal(ca.arrays[field], cb.arrays[field]), field


def test_a_bf16_teacher_teaches_within_bf16_rounding_and_the_student_stays_float32(tmp_path, teachers):
    from kdlab.engine.module import teacher_outputs
    from kdlab.methods import token_divergences as td
    from kdlab.models.precision import hold_in
    from kdlab.tasks.base import get_task

    data = load_data(DataSpec(**DATA))
    task = get_task(data)
    batch = {k: v[:16] for k, v in data.train.tensors.items()}
    fp32 = build_model(ModelSpec(**TEACHER), data, "teacher")
    fp32.load_state_dict(torch.load(teachers[0]))
    bf16 = hold_in(copy.deepcopy(fp32), "bf16")
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    a, b = (teacher_outputs(task, m.eval(), None, batch).logits for m in (fp32, bf16))
    assert b.dtype == torch.float32  # upcast for the loss
    s = torch.randn(16, 12, V, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(16, 12, dtype=torch.bool)
    la, lb = (td.divergence_loss(s, t, mask, td.forward_kl) for t in (a, b))
    rel = abs(lb.item() - la.item()) / la.item()
    assert 0 < rel < 1e-2  # bf16 keeps 8 bits of mantissa: logits within ~0.4 %, the loss within 1 %
    # End to end: the same run with the teacher in bf16 trains a float32 student to nearly the same loss.
    plain, half = str(tmp_path / "fp32"), str(tmp_path / "bf16")
    assert cli("run", config(tmp_path, teachers[0]), "--store", plain, "--quiet") == 0
    assert cli("run", config(tmp_path, teachers[0], name="bf16.yaml", dtype="bf16"), "--store", half, "--quiet") == 0
    ha, hb = history(student_run(plain)["path"]), history(student_run(half)["path"])
    for ea, eb in zip(ha, hb, strict=True):
        assert ea["train_fkl"] != eb["train_fkl"]
        assert eb["train_fkl"] == pytest.approx(ea["train_fkl"], rel=2e-2)
    state = checkpoint(student_run(half)["path"])["model"]
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())


@pytest.mark.parametrize("command, cache, extra, needle", [
    ("cache-teacher", None, {}, "no teacher has a cache setting"),
    ("cache-teacher", {"topk": 8}, {"pipeline": {"name": "on_policy", "prompt_len": 4}}, "does not read teacher.cache"),
    ("run", {"topk": 8}, {"pipeline": {"name": "on_policy", "prompt_len": 4}}, "remove teacher.cache"),
    ("run", {"sampled": 8}, {"methods": [{"name": "ce"}, {"name": "jsd"}]}, "jsd"),
    ("run", {"topk": 8, "sampled": 8}, {}, "not both"),
])
def test_cache_settings_that_cannot_work_are_refused_in_one_line(tmp_path, teachers, capsys, command, cache, extra, needle):
    import yaml

    cfg = config(tmp_path, teachers[0], cache)
    d = yaml.safe_load(Path(cfg).read_text())
    d.update(extra)
    Path(cfg).write_text(yaml.safe_dump(d))
    code, lines, err = run_bad(capsys, command, cfg, "--store", str(tmp_path / "s"), "--quiet")
    assert_clear(code, lines, err, needle)
    assert not Path(tmp_path, "s", "cache").exists()  # refused before anything was built
