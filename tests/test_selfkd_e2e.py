"""End-to-end: each self-distillation method / pipeline trains on tiny data, its own loss
term falls or is active, and the result differs from plain CE with the same seed."""

import json

import pytest
import torch

from helpers import assert_pinned, checkpoint
from kdlab.config.load import validate
from kdlab.errors import KdlabError
from kdlab.registry import DATASETS, MODELS
from kdlab.stages.runner import run_experiment
from kdlab.store.runstore import RunStore


def exp(methods, name, **extra):
    return validate({
        "name": name, "seeds": [0], "device": "cpu",
        "data": {"name": "digits_coarse", "params": {"groups": 10}, "batch_size": 128},
        "student": {"name": "mlp", "params": {"hidden": [32, 16]}},
        "train": {"epochs": 3, "optimizer": {"name": "adam", "lr": 0.003, "weight_decay": 0.0}},
        "methods": methods, **extra,
    })


def history(store, variant=None):
    row = [r for r in RunStore(store).rows() if r["kind"] == "student" and (variant is None or r["variant"] == variant)][0]
    return [json.loads(l) for l in open(f"{row['path']}/metrics.jsonl")]


@pytest.fixture(scope="module")
def ce_result(tmp_path_factory):
    res = run_experiment(exp([{"name": "ce"}], "ce"), store=str(tmp_path_factory.mktemp("ce")), progress=False)
    return res.results["main"][0]


def test_ce_baseline_is_pinned(ce_result):
    assert_pinned(ce_result, CE_PINS)


# The 3-epoch runs below, read once: test top-1, final validation loss, and the method's own
# term in the first and last epoch (see helpers.assert_pinned).
CE_PINS = {"test_top1": 32.3120, "val_loss": 2.14228, "test_loss": 2.14912}
PINS = {
    "byot": {"test_top1": 30.0836, "val_loss": 2.16607, "first_term": 2.07402, "last_term": 2.07265},
    "cs_kd": {"test_top1": 32.8691, "val_loss": 2.14449, "first_term": 0.000483859, "last_term": 0.003746},
    "dlb": {"test_top1": 33.7047, "val_loss": 2.12648, "first_term": 3.88485e-05, "last_term": 3.06392e-06},
    "ps_kd": {"test_top1": 30.0836, "val_loss": 2.1565, "first_term": 2.27585, "last_term": 2.26559},
    "tf_kd_reg": {"test_top1": 36.7688, "val_loss": 2.16469, "first_term": 0.00319556, "last_term": 0.00421107},
}


@pytest.mark.parametrize("method,term", [
    ("byot", "byot_kd"), ("cs_kd", "cs_kd"), ("dlb", "dlb"), ("ps_kd", "ps_kd"), ("tf_kd_reg", "tf_kd_reg"),
])
def test_self_distillation_method_trains_and_differs_from_ce(method, term, store, ce_result):
    res = run_experiment(exp([{"name": method}], method), store=store, progress=False)
    r = res.results["main"][0]
    h = history(store)
    assert all(f"train_{term}" in e for e in h)
    assert h[-1][f"train_{term}"] > 0
    assert h[-1]["train_total"] < h[0]["train_total"]
    figures = {"test_top1": r["test_top1"], "val_loss": r["val_loss"],
               "first_term": h[0][f"train_{term}"], "last_term": h[-1][f"train_{term}"]}
    assert_pinned(figures, PINS[method])
    assert r["val_loss"] != pytest.approx(ce_result["val_loss"], rel=1e-6)  # the method's term changed training
    if method == "ps_kd":
        ck = torch.load(f"{[x for x in RunStore(store).rows()][0]['path']}/checkpoints/last.pt", weights_only=True)
        seen = [v for k, v in ck["module"].items() if k.endswith("seen")][0]
        prev = [v for k, v in ck["module"].items() if k.endswith("prev")][0]
        assert bool(seen.all()) and torch.allclose(prev.sum(1), torch.ones(len(prev)), atol=1e-4)
    if method == "byot":
        ck = torch.load(f"{[x for x in RunStore(store).rows()][0]['path']}/checkpoints/last.pt", weights_only=True)
        assert any(k.startswith("methods.0.classifiers.0") for k in ck["module"])


def test_tf_kd_self_with_pretrained_copy(store, ce_result):
    e = exp([{"name": "tf_kd_self"}], "tfself", teacher={"model": {"name": "mlp", "params": {"hidden": [32, 16]}}})
    res = run_experiment(e, store=store, progress=False)
    h = history(store)
    assert h[-1]["train_tf_kd_self"] < h[0]["train_tf_kd_self"]
    assert res.results["main"][0]["val_loss"] != pytest.approx(ce_result["val_loss"], rel=1e-6)
    bad = exp([{"name": "tf_kd_self"}], "tfbad", teacher={"model": {"name": "mlp", "params": {"hidden": [64, 16]}}})
    with pytest.raises(KdlabError, match="copy of the student"):
        run_experiment(bad, store=store, progress=False)


def test_byot_needs_two_hint_points(store):
    e = validate({**exp([{"name": "byot"}], "b").model_dump(mode="json"), "student": {"name": "mlp", "params": {"hidden": [8]}}})
    with pytest.raises(KdlabError, match="2 hint points"):
        run_experiment(e, store=store, progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("ensemble", [False, True])
def test_ban_generations(store, ensemble):
    e = exp([{"name": "ce"}], "ban", pipeline={"name": "ban", "generations": 2, "ensemble_teacher": ensemble,
                                              "distill": [{"name": "kd", "tau": 1.0}]})
    res = run_experiment(e, store=store, progress=False)
    assert list(res.results) == ["gen0", "gen1", "gen2", "ensemble"]
    g = {k: v[0] for k, v in res.results.items()}
    # Later generations learn from their predecessor only (pure KD): their KD term is logged and
    # their result differs from generation 0's.
    h = history(store, "gen1")
    assert "train_kd" in h[0] and h[-1]["train_kd"] < h[0]["train_kd"]
    assert g["gen1"]["val_loss"] != pytest.approx(g["gen0"]["val_loss"], rel=1e-6)
    assert g["gen2"]["val_loss"] != pytest.approx(g["gen1"]["val_loss"], rel=1e-6)
    # The born-again ensemble is the average of the generations' probabilities, recomputed here
    # from their stored weights.
    assert g["ensemble"]["test_top1"] == pytest.approx(ensemble_top1(store), abs=1e-3)
    assert_pinned({f"{k}_top1": v["test_top1"] for k, v in g.items()}, BAN_PINS[ensemble])
    assert "generation" in str(res.render().columns[0].header)


# Test top-1 of the 3-epoch generations and their ensemble, read once (helpers.assert_pinned).
BAN_PINS = {
    False: {"gen0_top1": 32.3120, "gen1_top1": 16.9916, "gen2_top1": 15.8774, "ensemble_top1": 23.1198},
    True: {"gen0_top1": 32.3120, "gen1_top1": 16.9916, "gen2_top1": 16.9916, "ensemble_top1": 23.1198},
}


def ensemble_top1(store) -> float:
    data = DATASETS.get("digits_coarse").obj(seed=0, groups=10)
    probs = 0
    for row in RunStore(store).rows():
        model = MODELS.get("mlp").obj(num_classes=10, input_shape=data.input_shape, hidden=[32, 16])
        model.load_state_dict(checkpoint(row["path"])["model"])
        with torch.no_grad():
            probs = probs + model.eval()(data.test["x"]).softmax(-1)
    return float((probs.argmax(-1) == data.test["y"]).float().mean() * 100)
