"""Teacher-output caches: a cached run equals an uncached one exactly (no augmentation), the
cache is really read, a cache made from anything else is refused, a killed build resumes,
two processes build it once, `views: K` shows each sample only in its stored views, resume
and torchrun give the uninterrupted / single-process figures, top-k restores probabilities."""

from __future__ import annotations

import functools
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

from helpers import TINY, assert_clear, checkpoint, cli, history, run_bad, single_and_two_process_runs, same_tensors, write_config
from kdlab.data.augment import random_crop
from kdlab.engine.trainer import Trainer
from kdlab.knowledge.cached import CachedTeacher, from_topk, topk_fields
from kdlab.store import tensorcache
from kdlab.store.runstore import RunStore

ENV = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
VARIANTS = {  # logits only, and logits + a tapped teacher layer (rkd reads `flatten`)
    "kd": [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5, "tau": 4}],
    "rkd": [{"name": "ce"}, {"name": "rkd"}],
}
TRAIN = {"epochs": 2, "optimizer": {"name": "adam", "lr": 0.01, "weight_decay": 0.0}}


def _cfg(tmp_path, cache=None, file="exp.yaml", **updates):
    teacher = {**TINY["teacher"], **({"cache": cache} if cache is not None else {})}
    return write_config(tmp_path, name=file, teacher=teacher, **{"variants": VARIANTS, "train": TRAIN, **updates})


def _students(store) -> dict[str, dict]:
    return {r["variant"]: r for r in RunStore(store).rows() if r["kind"] == "student"}


def _caches(store) -> list[Path]:
    return sorted(p for p in Path(store, "cache").iterdir() if p.is_dir())


def test_a_cached_run_equals_an_uncached_run_bit_for_bit(tmp_path, capsys):
    plain, cached = str(tmp_path / "plain"), str(tmp_path / "cached")
    assert cli("run", _cfg(tmp_path), "--store", plain, "--quiet") == 0
    assert cli("run", _cfg(tmp_path, True, "c.yaml"), "--store", cached, "--quiet") == 0
    a, b = _students(plain), _students(cached)
    assert set(a) == set(b) == {"kd", "rkd"}
    for v in a:
        assert history(a[v]["path"], timeless=True) == history(b[v]["path"], timeless=True), v
        assert same_tensors(checkpoint(a[v]["path"])["model"], checkpoint(b[v]["path"])["model"]), v
    # One cache of logits, one of logits + the layer rkd taps; both listed with their sizes.
    fields = sorted(sorted(json.loads((p / "manifest.json").read_text())["fields"]) for p in _caches(cached))
    assert fields == [["feature0", "logits"], ["logits"]]
    capsys.readouterr()
    assert cli("runs", "--caches", "--store", cached) == 0
    out = capsys.readouterr().out
    assert out.count("complete") == 2 and "KiB" in out


def test_the_cache_is_read_instead_of_the_teacher(tmp_path):
    """Students of later seeds read the stored outputs: change them and the students change."""
    store = str(tmp_path / "s")
    cfg = _cfg(tmp_path, True, variants={"kd": VARIANTS["kd"]})
    assert cli("run", cfg, "--store", store, "--quiet") == 0
    (cache,) = _caches(store)
    logits = np.load(cache / "logits.npy", mmap_mode="r+")
    logits[:] = logits[:, ::-1]  # the teacher's classes reversed
    logits.flush()
    assert cli("run", cfg, "--store", store, "--quiet") == 0  # the same config again: same teacher, same cache
    first, again = sorted((r for r in RunStore(store).rows() if r["kind"] == "student"), key=lambda r: r["created"])
    assert history(first["path"], True) != history(again["path"], True)


AUGMENTED = {"name": "digits", "batch_size": 64, "params": {"augment": True}}


@pytest.mark.parametrize("first, change, named", [
    ({}, {"teacher": {"model": {"name": "mlp", "params": {"hidden": [32]}}}}, "teacher_weights"),
    ({}, {"data": {"name": "digits", "batch_size": 64, "split_seed": 1}}, "data.split_seed"),
    ({"data": AUGMENTED, "cache": {"views": 2}}, {"data": AUGMENTED, "cache": {"views": 2, "seed": 1}}, "view_seed"),
])
def test_a_cache_made_from_another_teacher_data_or_augmentation_is_refused(tmp_path, capsys, first, change, named):
    where = str(tmp_path / "shared-cache")
    store = str(tmp_path / "s")
    kd = {"kd": VARIANTS["kd"]}

    def config(over: dict, file: str) -> str:
        cfg = json.loads(json.dumps({**TINY, "variants": kd, "train": TRAIN, **over}))
        cfg.pop("cache", None)
        cfg["teacher"]["cache"] = {**over.get("cache", {}), "path": where}
        return write_config(tmp_path, cfg, file)

    assert cli("run", config(first, "first.yaml"), "--store", store, "--quiet") == 0
    code, lines, err = run_bad(capsys, "run", config(change, "other.yaml"), "--store", store, "--quiet")
    assert_clear(code, lines, err, where, named, "delete it")


def test_the_teacher_weights_hash_covers_every_parameter_and_buffer():
    from kdlab.registry import MODELS
    from kdlab.stages.teacher_cache import tensors_hash

    model = MODELS.get("cnn2d").obj(num_classes=10, input_shape=(1, 8, 8))  # batch norm: 0-dim counters
    before = tensors_hash(model.state_dict())
    for name, t in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            t += 1  # a 0-dim buffer
            break
    assert tensors_hash(model.state_dict()) != before


def test_a_cache_made_with_another_augmentation_is_refused():
    """The augmentation recipe (function and arguments, no addresses), views and their seed are
    part of what a cache was made from."""
    from kdlab.stages.teacher_cache import describe

    one, two = functools.partial(random_crop, padding=1), functools.partial(random_crop, padding=2)
    assert describe(one) == describe(functools.partial(random_crop, padding=1))
    assert describe(one) != describe(two) and "0x" not in describe(one)
    stored = {"augmentation": describe(one), "views": 4, "view_seed": 0}
    assert tensorcache.differences(stored, {**stored, "augmentation": describe(two)}) == ["augmentation"]
    with pytest.raises(Exception, match="view_seed, views"):
        tensorcache.check_made_from(Path("c"), stored, {**stored, "views": 2, "view_seed": 1})


@pytest.mark.parametrize("data, cache, needle", [
    ({"name": "digits", "params": {"augment": True}}, True, "views: K"),
    ({"name": "digits"}, {"views": 2}, "no augmentation"),
    ({"name": "digits", "stream": True, "workers": 0}, True, "data.stream: false"),
])
def test_a_cache_that_cannot_match_the_data_is_refused(tmp_path, capsys, data, cache, needle):
    cfg = _cfg(tmp_path, cache, data={**data, "batch_size": 64}, variants={"kd": VARIANTS["kd"]})
    code, lines, err = run_bad(capsys, "run", cfg, "--store", str(tmp_path / "s"), "--quiet")
    assert_clear(code, lines, err, needle)


BUILD = textwrap.dedent("""
    import sys, time, numpy as np
    from kdlab.store import tensorcache
    def compute(a, b):
        time.sleep(float(sys.argv[2]))
        r = np.arange(a, b, dtype=np.float32)
        return {"v": np.stack([r, -r], 1)}
    tensorcache.build(sys.argv[1], {"what": 1}, 100, 10, compute)
""")


def test_a_build_killed_midway_resumes_to_a_complete_cache(tmp_path):
    path = tmp_path / "c"
    proc = subprocess.Popen([sys.executable, "-c", BUILD, str(path), "0.3"], env=ENV)
    t0 = time.time()
    while len(list((path / "shards").glob("*.done"))) < 2:
        assert time.time() - t0 < 60 and proc.poll() is None
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list((path / "shards").glob("*.done")))
    assert 2 <= done < 10 and not (path / tensorcache.COMPLETE).exists()
    with pytest.raises(Exception, match="not complete"):
        tensorcache.TensorCache.open(path)
    computed = []

    def compute(a, b):
        computed.append(a)
        r = np.arange(a, b, dtype=np.float32)
        return {"v": np.stack([r, -r], 1)}

    cache = tensorcache.build(path, {"what": 1}, 100, 10, compute)
    assert computed == list(range(done * 10, 100, 10))  # only the shards the killed build had not finished
    r = np.arange(100, dtype=np.float32)
    assert np.array_equal(cache.read("v", np.arange(100)), np.stack([r, -r], 1))
    # A partial build made from something else is started afresh, not mixed in.
    assert tensorcache.build(path, {"what": 1}, 100, 10, compute).rows == 100


@pytest.mark.slow
def test_two_processes_needing_the_same_cache_build_it_once(tmp_path):
    store = str(tmp_path / "s")
    cfg = _cfg(tmp_path, True, variants={"kd": VARIANTS["kd"]})
    procs = [subprocess.Popen([sys.executable, "-m", "kdlab", "run", cfg, "--store", store], env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    text = "".join(o + e for o, e in outs)
    assert text.count("building its output cache") == 1 and text.count("reusing its output cache") == 1
    assert len(_caches(store)) == 1


VIEWS = {"data": {"name": "digits", "batch_size": 64, "params": {"augment": True}},
         "variants": {"kd": VARIANTS["kd"]}, "train": {**TRAIN, "epochs": 3}}


def test_views_show_each_sample_only_in_its_stored_views(tmp_path, monkeypatch):
    seen = []
    step = Trainer.step

    def recording(self, batch, t):
        if self.setup.label.startswith("student"):
            seen.append((int(t), batch["index"].clone(), batch["x"].clone(), self.teacher_outputs(batch)[0].logits,
                         self.teachers[0](batch["x"]).detach()))
        return step(self, batch, t)

    monkeypatch.setattr(Trainer, "step", recording)
    store = str(tmp_path / "s")
    assert cli("run", _cfg(tmp_path, {"views": 2}, **VIEWS), "--store", store, "--quiet") == 0
    (path,) = _caches(store)
    cache = tensorcache.TensorCache.open(path)
    n = cache.manifest["samples"]
    x = torch.from_numpy(np.array(cache.arrays["x"])).view(2, n, -1)
    assert not torch.equal(x[0], x[1])  # two different augmented views per sample
    shown = torch.full((3, n), -1)
    for epoch, index, bx, cached, online in seen:
        flat = bx.flatten(1)
        match = [(x[:, index] == flat).all(-1)[k] for k in range(2)]  # (view, row)
        assert bool((match[0] | match[1]).all())  # every image the student saw is a stored view of its sample
        shown[epoch, index] = match[1].long()
        assert torch.allclose(cached, online, atol=1e-5)  # the teacher's outputs are on that very image
    assert bool((shown >= 0).all())
    # Each sample alternates between its views, (offset + epoch) mod 2 (seen where they differ).
    differ = (x[0] != x[1]).any(-1)
    assert differ.float().mean() > 0.8
    assert torch.equal(shown[1, differ], 1 - shown[0, differ]) and torch.equal(shown[2], shown[0])


def test_a_resumed_cached_run_equals_an_uninterrupted_one(tmp_path):
    cfg = json.loads(json.dumps({**TINY, **VIEWS}))
    # A one-epoch teacher finishes before the stop, so the stop lands in the student.
    cfg["teacher"].update(cache={"views": 2}, train={**TRAIN, "epochs": 1})
    cfg = write_config(tmp_path, cfg)
    whole, parts = str(tmp_path / "whole"), str(tmp_path / "parts")
    assert cli("run", cfg, "--store", whole, "--quiet") == 0
    assert cli("run", cfg, "--store", parts, "--quiet", "--stop-after-epoch", "1") == 0
    assert [len(history(r["path"])) for r in _students(parts).values()] == [1]
    assert cli("run", cfg, "--store", parts, "--quiet", "--resume") == 0
    (a,), (b,) = _students(whole).values(), _students(parts).values()
    assert history(a["path"], True) == history(b["path"], True)
    assert same_tensors(checkpoint(a["path"])["model"], checkpoint(b["path"])["model"])


def test_topk_restores_the_top_probabilities_and_the_rest_mass():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 50, generator=g) * 3
    f = topk_fields(logits, 8)
    back = from_topk(f["values"], f["indices"], f["rest"], 50)
    p, q = logits.softmax(-1), back.softmax(-1)
    top = p.topk(8, -1)
    assert torch.allclose(q.gather(-1, top.indices), top.values, atol=1e-6)
    rest_p = 1 - top.values.sum(-1)
    others = q.scatter(-1, top.indices, 0.0)
    assert torch.allclose(others.sum(-1), rest_p, atol=1e-6)
    assert torch.allclose(others.max(-1).values * 42, rest_p, atol=1e-6)  # spread evenly over the 42 others


def test_float16_and_topk_caches_store_what_they_say(tmp_path):
    store = str(tmp_path / "s")
    cfg = _cfg(tmp_path, {"dtype": "float16", "topk": 3}, variants={"kd": VARIANTS["kd"]})
    assert cli("run", cfg, "--store", store, "--quiet") == 0
    (path,) = _caches(store)
    fields = json.loads((path / "manifest.json").read_text())["fields"]
    assert fields == {"logits.indices": {"dtype": "int32", "shape": [3]}, "logits.rest": {"dtype": "float16", "shape": []},
                      "logits.values": {"dtype": "float16", "shape": [3]}}
    t = CachedTeacher(tensorcache.TensorCache.open(path), torch.device("cpu"))
    out = t.teacher_outputs({"index": torch.tensor([0, 5])}).logits
    assert out.shape == (2, 10) and out.dtype == torch.float32


@pytest.mark.slow
@pytest.mark.ddp
def test_a_cached_run_under_torchrun_matches_one_process(tmp_path):
    """Each rank reads its share of every batch from the cache by the batch's sample index."""
    cfg = _cfg(tmp_path, True, variants={"kd": VARIANTS["kd"]}, train={"epochs": 2, "optimizer": {"name": "sgd", "lr": 0.1}})
    single, multi = single_and_two_process_runs(tmp_path, cfg)
    (a,), (b,) = _students(single).values(), _students(multi).values()
    assert len(_caches(multi)) == 1
    for ea, eb in zip(history(a["path"]), history(b["path"]), strict=True):
        assert eb["train_total"] == pytest.approx(ea["train_total"], rel=1e-3)
    assert b["summary"]["test_loss"] == pytest.approx(a["summary"]["test_loss"], rel=1e-3)
