"""End to end: each logit / multi-teacher / online method trains a student through the real
engine on tiny data (the loss falls, the weights move), and the TAKD chain runs."""

import copy
import json
from pathlib import Path

import pytest
import torch

from kdlab.config.schema import Experiment
from kdlab.seeding import seed_everything
from kdlab.models.build import build_model
from kdlab.stages.building import load_data
from kdlab.stages.runner import run_experiment

DATA = {"name": "hierarchy", "batch_size": 32,
        "params": {"num_superclasses": 2, "classes_per_superclass": 3, "dim": 8, "samples_per_class": 40}}
TRAIN = {"epochs": 4, "optimizer": {"name": "adam", "lr": 0.01, "weight_decay": 0.0}, "schedule": {"name": "constant"}}
TEACHER = {"model": {"name": "mlp", "params": {"hidden": [48]}}}
TEACHER2 = {"model": {"name": "mlp", "params": {"hidden": [24, 24]}}}
STUDENT = {"name": "mlp", "params": {"hidden": [8]}}

CASES = {
    "dkd": ({"name": "dkd", "warmup": 0}, 1),  # no warm-up: a rising weight would mask the fall
    "dkd_ls": ({"name": "dkd", "warmup": 0, "standardize": True, "tau": 2}, 1),
    "kd_ls": ({"name": "kd", "standardize": True, "tau": 2}, 1),
    "dist": ({"name": "dist"}, 1),
    "ctkd": ({"name": "ctkd", "tau_init": 4.0, "lambda_epochs": 2}, 1),
    "avg": ({"name": "avg"}, 2),
    "ca_mkd": ({"name": "ca_mkd"}, 2),
    "aekd": ({"name": "aekd"}, 2),
    "dml": ({"name": "dml"}, 0),
}


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    # Teachers are keyed by recipe: the cases share them instead of training each time.
    return str(tmp_path_factory.mktemp("logit_multi_store"))


def experiment(method: dict, n_teachers: int, **extra) -> Experiment:
    cfg = {"name": "e2e", "seeds": [0], "device": "cpu", "data": DATA, "student": STUDENT, "train": TRAIN,
           "methods": [{"name": "ce"}, method], **extra}
    if n_teachers == 1:
        cfg["teacher"] = TEACHER
    elif n_teachers == 2:
        cfg["teachers"] = [TEACHER, TEACHER2]
    return Experiment.model_validate(copy.deepcopy(cfg))


def run_dir(store: str, run_id: str) -> Path:
    return Path(store) / run_id


def final_weights(store: str, run_id: str) -> dict:
    return torch.load(run_dir(store, run_id) / "checkpoints" / "last.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def ce_only(shared_store):
    """The same student, seed and recipe trained with CE alone: what each method must differ from."""
    result = run_experiment(experiment({"name": "ls", "eps": 0.0}, 0), store=shared_store, progress=False)
    return final_weights(shared_store, result.results["main"][0]["run_id"])


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_method_trains_student(case, shared_store, ce_only):
    method, n_teachers = CASES[case]
    exp = experiment(method, n_teachers)
    result = run_experiment(exp, store=shared_store, progress=False)
    summary = result.results["main"][0]
    rdir = run_dir(shared_store, summary["run_id"])
    history = [json.loads(l) for l in (rdir / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["train_total"] < history[0]["train_total"]
    # The method's own term must be present in the logged terms (it was part of the loss).
    method_keys = [k for k in history[0] if k.startswith("train_") and k not in ("train_total", "train_ce", "train_time")]
    assert method_keys, history[0]
    assert sum(history[-1][k] for k in method_keys) < sum(history[0][k] for k in method_keys)
    # The student moved away from its seeded initialisation, and not as CE alone moves it.
    seed_everything(0)
    init = build_model(exp.student, load_data(exp.data))
    trained = final_weights(shared_store, summary["run_id"])
    assert any(not torch.equal(v, trained[k]) for k, v in init.state_dict().items())
    assert any((v - ce_only[k]).abs().max() > 1e-4 for k, v in trained.items())


@pytest.mark.slow
def test_ctkd_learns_its_temperature(shared_store):
    """The temperature is optimised by the engine (it is a method parameter)."""
    exp = experiment({"name": "ctkd", "tau_init": 4.0, "lambda_epochs": 1}, 1)
    result = run_experiment(exp, store=shared_store, progress=False)
    rdir = run_dir(shared_store, result.results["main"][0]["run_id"])
    module = torch.load(rdir / "checkpoints" / "last.pt", weights_only=True)["module"]
    theta = [v for k, v in module.items() if k.endswith("theta")]
    assert len(theta) == 1 and abs(theta[0].item() - (-1.6094379)) > 1e-3  # logit((4-1)/20) at init


@pytest.mark.slow
def test_takd_chain(shared_store):
    exp = experiment({"name": "kd"}, 1, pipeline={"name": "takd", "assistants": [{"name": "mlp", "params": {"hidden": [24]}}],
                                                  "direct": True})
    result = run_experiment(exp, store=shared_store, progress=False)
    links = result.chains["main"]
    assert [l.role for l in links] == ["teacher", "assistant 1", "student", "student (direct)"]
    assert links[1].params > links[2].params
    ids = [l.runs[0]["run_id"] for l in links[1:]]
    assert len(set(ids)) == 3
    # The student of the chain was taught by the assistant, the direct one by the teacher: same
    # seed and recipe, different teachers, so different weights.
    chain, direct = final_weights(shared_store, ids[1]), final_weights(shared_store, ids[2])
    assert any(not torch.equal(v, direct[k]) for k, v in chain.items())
    header, rows = result.rows()
    assert len(rows) == 4 and all(r[4] != "–" for r in rows)
    from rich.console import Console

    console = Console(record=True, width=150)
    console.print(result.render())
    assert "assistant 1" in console.export_text()


def test_takd_needs_one_teacher():
    from kdlab.errors import KdlabError
    from kdlab.stages.context import RunContext
    from kdlab.registry import PIPELINES

    exp = experiment({"name": "kd"}, 2, pipeline={"name": "takd", "assistants": [{"name": "mlp"}]})
    with pytest.raises(KdlabError, match="one teacher"):
        PIPELINES.get("takd").obj(exp, RunContext(None, torch.device("cpu")))


def test_takd_params_validated():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="assistants"):
        experiment({"name": "kd"}, 1, pipeline={"name": "takd", "assistants": []})
