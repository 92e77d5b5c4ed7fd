"""End-to-end ranking distillation on tiny synthetic data, through the engine and run store."""

import json
from pathlib import Path

import pytest
import torch

from helpers import assert_pinned
from kdlab.config.schema import Experiment
from kdlab.data.recsys_synthetic import recsys_synthetic
from kdlab.methods.base import MethodContext
from kdlab.methods.rank_pckd import PCKD
from kdlab.models.recsys_mf import bpr_mf
from kdlab.stages.runner import run_experiment
from kdlab.tasks.base import get_task

DATA = {"name": "recsys_synthetic", "params": {"users": 80, "items": 60, "dim": 8, "mean_interactions": 15, "k_core": 3}, "batch_size": 256}


def experiment(variants, student="bpr_mf", epochs=3, seeds=(0,)):
    return Experiment(
        name="recsys-tiny",
        seeds=list(seeds),
        device="cpu",
        pipeline={"name": "recsys_compare"},
        data=DATA,
        teacher={"model": {"name": "bpr_mf", "params": {"dim": 32}}, "methods": [{"name": "bpr"}],
                 "train": {"epochs": 6, "optimizer": {"name": "adam", "lr": 0.02, "weight_decay": 0.0}, "schedule": {"name": "constant"}}},
        student={"name": student, "params": {"dim": 4}},
        variants=variants,
        train={"epochs": epochs, "optimizer": {"name": "adam", "lr": 0.02, "weight_decay": 0.0}, "schedule": {"name": "constant"}},
    )


def history(store, run_id):
    return [json.loads(l) for l in (Path(store) / run_id / "metrics.jsonl").read_text().splitlines()]


def test_pckd_end_to_end(tmp_path):
    store = str(tmp_path / "runs")
    exp = experiment({
        "scratch": [{"name": "bpr"}],
        "pckd": [{"name": "bpr"}, {"name": "pckd", "reg": "hybrid", "lam": 0.05, "alpha": 0.5, "M": 20, "Q": 5}],
    })
    res = run_experiment(exp, store=store, progress=False)
    scratch, pckd = res.result.results["scratch"][0], res.result.results["pckd"][0]
    # Read once from this tiny run (see helpers.assert_pinned).
    assert_pinned(scratch, {"test_ndcg20": 0.223154, "test_recall20": 0.529915, "val_ndcg20": 0.220392})
    assert_pinned(pckd, {"test_ndcg20": 0.237642, "test_recall20": 0.583333, "incons": 0.469434})
    assert pckd["test_ndcg20"] != scratch["test_ndcg20"]  # the distillation terms changed training
    assert "incons" not in scratch
    h = history(store, pckd["run_id"])
    assert all("train_incons" in r and "train_pckd_reg" in r and "train_de" in r for r in h)
    assert h[-1]["train_total"] < h[0]["train_total"]
    assert h[-1]["train_de"] < h[0]["train_de"]  # the projector learns to map into the teacher space
    md = res.markdown()
    assert "teacher" in md and "pckd" in md and "NDCG@20" in md


def tiny_method(guide="teacher", reg="hybrid", refresh=2):
    torch.manual_seed(0)
    data = recsys_synthetic(seed=0, users=50, items=40, dim=4, mean_interactions=12, k_core=2)
    task = get_task(data)
    student, teacher = bpr_mf(**data.model_args, dim=4), bpr_mf(**data.model_args, dim=16)
    ctx = MethodContext(num_classes=data.num_classes, student=student, teachers=[teacher], train_size=len(data.train),
                        epochs=4, device=torch.device("cpu"), data=data, task=task)
    m = PCKD(PCKD.Params(guide=guide, reg=reg, refresh=refresh, M=10, Q=4, pairs=3), ctx)
    batch = {k: v[:64] for k, v in data.train.tensors.items()}
    t_out = task.forward(teacher, batch)
    m.build(task.forward(student, batch), [t_out])
    return m, student, teacher, task, batch, t_out


@pytest.mark.parametrize("reg", ["pair", "list", "hybrid"])
def test_pckd_regulariser_trains_only_the_projector(reg):
    m, student, _, task, batch, t_out = tiny_method(reg=reg)
    m.on_epoch_start(0)
    out = m(batch, task.forward(student, batch), [t_out])
    out["pckd_reg"].backward()
    assert student.user.weight.grad is None and student.item.weight.grad is None
    assert sum(float(p.grad.abs().sum()) for p in m.proj_item.parameters() if p.grad is not None) > 0


def test_student_guide_refreshes_every_n_epochs():
    m, student, *_ = tiny_method(guide="student", refresh=2)
    m.on_epoch_start(0)
    first = m._top.clone()
    with torch.no_grad():
        student.user.weight.add_(torch.randn_like(student.user.weight))
    m.on_epoch_start(1)
    assert torch.equal(m._top, first)  # not a refresh epoch
    m.on_epoch_start(2)
    assert not torch.equal(m._top, first)  # refreshed from the changed student
    u, i = student.tables()
    assert m._top[0].tolist()[0] in (u[0] @ i.T).topk(12).indices.tolist()


@pytest.mark.slow
@pytest.mark.parametrize("method,student", [
    ({"name": "rd", "K": 5}, "bpr_mf"),
    ({"name": "cd", "K": 5, "M": 20}, "bpr_mf"),
    ({"name": "rrd", "K": 5, "L": 20, "M": 20}, "bpr_mf"),
    ({"name": "de", "lam": 0.05}, "bpr_mf"),
    ({"name": "pckd", "reg": "pair", "guide": "student", "refresh": 1, "M": 20}, "lightgcn"),
])
def test_each_method_changes_the_student(tmp_path, method, student):
    store = str(tmp_path / "runs")
    exp = experiment({"scratch": [{"name": "bpr"}], "kd": [{"name": "bpr"}, method]}, student=student, epochs=2)
    res = run_experiment(exp, store=store, progress=False).result.results
    kd = res["kd"][0]
    assert kd["test_ndcg20"] != res["scratch"][0]["test_ndcg20"]
    # The method's own term was logged, non-zero, in every epoch.
    term = {"rd": "rd", "cd": "cd", "rrd": "rrd", "de": "de", "pckd": "pckd_reg"}[method["name"]]
    assert all(r[f"train_{term}"] > 0 for r in history(store, kd["run_id"]))
    assert_pinned(kd, PINS[method["name"]])


# The 2-epoch KD students above, read once (see helpers.assert_pinned).
PINS = {
    "rd": {"test_ndcg20": 0.245472, "test_recall20": 0.587607},
    "cd": {"test_ndcg20": 0.20307, "test_recall20": 0.5},
    "rrd": {"test_ndcg20": 0.287252, "test_recall20": 0.623932},
    "de": {"test_ndcg20": 0.198573, "test_recall20": 0.472222},
    "pckd": {"test_ndcg20": 0.497514, "test_recall20": 0.786325},
}
