"""The teacher-output cache beyond `distill`: takd caches every link's teacher (the teacher,
then each trained assistant), ban caches each generation for the next (`pipeline.cache`), the
Python API takes `teacher_cache`; each gives the uncached run's figures and weights exactly.
Pipelines that do not read the cache refuse it in one line instead of ignoring it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import TINY, assert_clear, checkpoint, cli, history, run_bad, same_tensors, write_config
from kdlab.errors import KdlabError
from kdlab.store.runstore import RunStore

TRAIN = {"epochs": 2, "optimizer": {"name": "adam", "lr": 0.01, "weight_decay": 0.0}}
ASSISTANT = {"name": "mlp", "params": {"hidden": [24]}}


def _trained(store) -> dict[str, dict]:
    """The store's student and assistant runs by variant."""
    return {r["variant"]: r for r in RunStore(store).rows() if r["kind"] in ("student", "assistant")}


def _same_runs(plain: str, cached: str, variants: set[str]) -> None:
    a, b = _trained(plain), _trained(cached)
    assert set(a) == set(b) == variants
    for v in a:
        assert history(a[v]["path"], timeless=True) == history(b[v]["path"], timeless=True), v
        assert same_tensors(checkpoint(a[v]["path"])["model"], checkpoint(b[v]["path"])["model"]), v


def _caches(store) -> list[dict]:
    return [json.loads((p / "manifest.json").read_text()) for p in sorted(Path(store, "cache").iterdir())]


@pytest.mark.slow
def test_takd_caches_the_teacher_and_each_assistant_and_changes_nothing(tmp_path):
    pipeline = {"name": "takd", "assistants": [ASSISTANT], "direct": True}
    plain, cached = str(tmp_path / "plain"), str(tmp_path / "cached")
    assert cli("run", write_config(tmp_path, train=TRAIN, pipeline=pipeline), "--store", plain, "--quiet") == 0
    teacher = {**TINY["teacher"], "cache": True}
    cfg = write_config(tmp_path, name="c.yaml", train=TRAIN, pipeline=pipeline, teacher=teacher)
    assert cli("run", cfg, "--store", cached, "--quiet") == 0
    _same_runs(plain, cached, {"main-ta1", "main-student", "main-direct"})
    # Two caches: the teacher's (read by assistant 1 and the direct student) and the assistant's.
    made = sorted(m["teacher"] for m in _caches(cached))
    assert made == sorted(["MLP 4,810 params", f"MLP {_params(cached, 'main-ta1'):,} params"]), made


def _params(store, variant) -> int:
    return _trained(store)[variant]["summary"]["params"]


def test_ban_caches_each_generation_for_the_next_and_changes_nothing(tmp_path):
    ban = {"name": "ban", "generations": 2, "distill": [{"name": "kd", "tau": 1.0}]}
    plain, cached = str(tmp_path / "plain"), str(tmp_path / "cached")
    base = dict(train=TRAIN, methods=[{"name": "ce"}], teacher=None)
    assert cli("run", write_config(tmp_path, pipeline=ban, **base), "--store", plain, "--quiet") == 0
    cfg = write_config(tmp_path, name="c.yaml", pipeline={**ban, "cache": True}, **base)
    assert cli("run", cfg, "--store", cached, "--quiet") == 0
    _same_runs(plain, cached, {"gen0", "gen1", "gen2"})
    assert len(_caches(cached)) == 2  # generation 0's outputs (for gen 1), generation 1's (for gen 2)


@pytest.mark.parametrize("pipeline, needles", [
    ({"name": "education", "groups": 2, "grade_epochs": [0, 1]}, ["'education'", "remove teacher.cache", "distill"]),
    ({"name": "ban"}, ["'ban'", "pipeline.cache: true"]),
    ({"name": "diagnose"}, ["'diagnose'", "takd"]),
])
def test_pipelines_that_do_not_read_the_cache_refuse_it(tmp_path, capsys, pipeline, needles):
    cfg = write_config(tmp_path, pipeline=pipeline, methods=[{"name": "ce"}],
                       teacher={**TINY["teacher"], "cache": True})
    store = tmp_path / "s"
    assert_clear(*run_bad(capsys, "validate", cfg), *needles)  # a config error: `kdlab validate` says so
    assert_clear(*run_bad(capsys, "run", cfg, "--store", str(store)), *needles)
    assert not RunStore(str(store)).rows()  # refused before anything trained


def test_ban_cache_path_is_refused(tmp_path, capsys):
    cfg = write_config(tmp_path, pipeline={"name": "ban", "cache": {"path": str(tmp_path / "c")}}, teacher=None)
    assert_clear(*run_bad(capsys, "run", cfg), "cache.path", "one generation")


def _api_data():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 12, generator=g), torch.randint(0, 3, (200,), generator=g)
    return (x[:150], y[:150]), (x[150:], y[150:])


def _mlp(width: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(12, width), torch.nn.ReLU(), torch.nn.Linear(width, 3))


def test_the_api_reads_the_teacher_cache_and_changes_nothing(tmp_path):
    from kdlab.api import distill

    train, val = _api_data()
    teacher = _mlp(32, 1)
    kw = dict(train=train, val=val, methods=["ce", "kd"], epochs=2, lr=0.01, progress=False)
    plain = distill(teacher, _mlp(8, 2), store=str(tmp_path / "plain"), **kw)
    where = tmp_path / "cache"
    cached = distill(teacher, _mlp(8, 2), store=str(tmp_path / "s"), teacher_cache={"path": str(where)}, **kw)
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("time", "train_time")} for r in h]  # noqa: E731
    assert strip(cached.history) == strip(plain.history)
    assert same_tensors(cached.student.state_dict(), plain.student.state_dict())
    assert json.loads((where / "manifest.json").read_text())["teacher"] == "Sequential 515 params"
    # The cache is read, not the teacher: stored logits changed on disk change the next student.
    import numpy as np

    logits = np.load(where / "logits.npy", mmap_mode="r+")
    logits[:] = 0.0
    logits.flush()
    uniform = distill(teacher, _mlp(8, 2), store=str(tmp_path / "s"), teacher_cache={"path": str(where)}, **kw)
    assert uniform.history[0]["train_kd"] != plain.history[0]["train_kd"]


def test_the_api_teacher_cache_needs_a_place_and_a_teacher_reader():
    from kdlab.api import distill

    train, _ = _api_data()
    with pytest.raises(KdlabError, match="store=... or teacher_cache"):
        distill(_mlp(32, 1), _mlp(8, 2), train=train, epochs=1, teacher_cache=True, progress=False)
    with pytest.raises(KdlabError, match="no method reads the teacher"):
        distill(None, _mlp(8, 2), train=train, methods=["ce"], epochs=1, teacher_cache=True, progress=False)
