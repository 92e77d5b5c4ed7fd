"""The method contract, for EVERY registered method: it builds from a config, trains one epoch
through the CLI (forward and backward), logs its named loss terms as finite non-zero numbers, moves the
student's weights, and checkpoints (its own trainable state included) in a file that
`torch.load(weights_only=True)` reads.

Each method runs alone (weight 1) where it can, so the student's weights can only move by the
method's own gradient. The reference for "moved" is the same setup trained with a learning rate
of 1e-30: the student's initial weights (to within 1e-28; a real step moves them by ~1e-2).

A method registered without a row in CASES fails `test_every_registered_method_has_a_case`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from helpers import checkpoint, cli, history, write_config
from kdlab.registry import METHODS
from kdlab.store.runstore import RunStore

ADAM = {"name": "adam", "lr": 0.01, "weight_decay": 0.0}
ONE_EPOCH = {"epochs": 1, "optimizer": ADAM, "schedule": {"name": "constant"}}
TEACHER_TRAIN = {"epochs": 2, "optimizer": ADAM, "schedule": {"name": "constant"}}

DIGITS = {"name": "digits", "batch_size": 64, "train_fraction": 0.25}
MLP_T = {"name": "mlp", "params": {"hidden": [32, 32]}}
MLP_S = {"name": "mlp", "params": {"hidden": [16, 16]}}
CNN_T = {"name": "cnn2d", "params": {"channels": [8, 16, 16]}}
CNN_S = {"name": "cnn2d", "params": {"channels": [4, 8, 8]}}
CNN_T_SAME_WIDTHS = {"name": "cnn2d", "params": {"channels": [4, 8, 8], "kernel_size": 5}}  # FSP's Gram matrices need them
SUB_T = {"name": "subclass", "params": {"base": {"name": "mlp", "params": {"hidden": [32]}}, "subclasses": 3}}
SUB_S = {"name": "subclass", "params": {"base": {"name": "mlp", "params": {"hidden": [16]}}, "subclasses": 3}}
RECSYS = {"name": "recsys_synthetic", "batch_size": 256,
          "params": {"users": 60, "items": 50, "dim": 8, "mean_interactions": 12, "k_core": 3}}
LM = {"name": "pydoc", "batch_size": 16, "params": {"seq_len": 12, "max_tokens": 3000, "min_freq": 2}}


def teacher(model, methods=None):
    t = {"model": model, "train": TEACHER_TRAIN}
    return {**t, "methods": methods} if methods else t


# Setup name -> the config around the method(s): data, student, teacher(s).
SETUPS: dict[str, dict] = {
    "mlp": {"data": DIGITS, "student": MLP_S, "teacher": teacher(MLP_T)},
    "mlp_self": {"data": DIGITS, "student": MLP_S},
    "mlp_copy": {"data": DIGITS, "student": MLP_S, "teacher": teacher(MLP_S)},
    "mlp_multi": {"data": DIGITS, "student": MLP_S, "teachers": [teacher(MLP_T), teacher({"name": "mlp", "params": {"hidden": [24]}})]},
    "cnn": {"data": DIGITS, "student": CNN_S, "teacher": teacher(CNN_T)},
    "cnn_same_widths": {"data": DIGITS, "student": CNN_S, "teacher": teacher(CNN_T_SAME_WIDTHS)},
    "cnn_self": {"data": DIGITS, "student": CNN_S},
    "hierarchy_self": {"data": {"name": "hierarchy", "batch_size": 64, "params": {"num_superclasses": 2, "classes_per_superclass": 3, "dim": 8, "samples_per_class": 30}},
                       "student": MLP_S},
    "subclass": {"data": {"name": "digits_coarse", "params": {"groups": 2}, "batch_size": 64, "train_fraction": 0.25},
                 "student": SUB_S, "teacher": teacher(SUB_T, [{"name": "ce"}, {"name": "subclass_aux"}])},
    "rank": {"data": RECSYS, "student": {"name": "bpr_mf", "params": {"dim": 4}},
             "teacher": teacher({"name": "bpr_mf", "params": {"dim": 16}}, [{"name": "bpr"}])},
    "rank_gcn": {"data": RECSYS, "student": {"name": "lightgcn", "params": {"dim": 4}},
                 "teacher": teacher({"name": "bpr_mf", "params": {"dim": 16}}, [{"name": "bpr"}])},
    "lm": {"data": LM, "student": {"name": "lstm_lm", "params": {"emb_dim": 8, "hidden": 8, "dropout": 0.0}}},
    "lm_kd": {"data": LM, "student": {"name": "lstm_lm", "params": {"emb_dim": 8, "hidden": 8, "dropout": 0.0}},
              "teacher": teacher({"name": "lstm_lm", "params": {"emb_dim": 16, "hidden": 16, "dropout": 0.0}})},
}
# The supervised loss of each setup's task: the reference run's method.
SUPERVISED = {"rank": "bpr", "rank_gcn": "bpr"}


@dataclass(frozen=True)
class Case:
    setup: str
    method: dict  # the method's config entry
    terms: tuple[str, ...]  # its named loss terms, logged as train_<term>
    state: bool = False  # has trainable parts or buffers of its own, checkpointed with the student
    with_ce: bool = False  # an instrument (no loss of its own): runs beside ce
    summary: tuple[str, ...] = field(default=())  # keys it adds to summary.json


CASES: dict[str, Case] = {
    # supervised baselines
    "ce": Case("mlp_self", {"name": "ce"}, ("ce",)),
    "ls": Case("mlp_self", {"name": "ls", "eps": 0.1}, ("ls",)),
    # logit distillation
    "kd": Case("mlp", {"name": "kd", "tau": 4}, ("kd",)),
    "dkd": Case("mlp", {"name": "dkd"}, ("dkd_tckd", "dkd_nckd")),
    "dist": Case("mlp", {"name": "dist"}, ("dist_inter", "dist_intra")),
    "ctkd": Case("mlp", {"name": "ctkd"}, ("ctkd",), state=True),
    "kd_pt": Case("mlp", {"name": "kd_pt"}, ("kd_pt",)),
    "kd_sim": Case("mlp", {"name": "kd_sim"}, ("kd_sim",), state=True),
    "kd_pt_sim": Case("mlp", {"name": "kd_pt_sim", "alpha": 0.5}, ("kd_pt_sim", "kd_pt_sim_ce"), state=True),
    # multi-teacher and online
    "avg": Case("mlp_multi", {"name": "avg"}, ("avg_kd",)),
    "ca_mkd": Case("mlp_multi", {"name": "ca_mkd"}, ("ca_mkd",)),
    "aekd": Case("mlp_multi", {"name": "aekd"}, ("aekd",)),
    "dml": Case("mlp_self", {"name": "dml"}, ("dml", "dml_peers"), state=True),
    # feature maps
    "fitnet": Case("cnn", {"name": "fitnet"}, ("fitnet",), state=True),
    "at": Case("cnn", {"name": "at"}, ("at",)),
    "ab": Case("cnn", {"name": "ab"}, ("ab",), state=True),
    "ft": Case("cnn", {"name": "ft"}, ("ft", "ft_rec"), state=True),
    "nst": Case("cnn", {"name": "nst"}, ("nst",)),
    "ofd": Case("cnn", {"name": "ofd"}, ("ofd",), state=True),
    "vid": Case("cnn", {"name": "vid"}, ("vid",), state=True),
    "reviewkd": Case("cnn", {"name": "reviewkd"}, ("reviewkd",), state=True),
    "fsp": Case("cnn_same_widths", {"name": "fsp"}, ("fsp",)),
    # relations and contrastive
    "sp": Case("cnn", {"name": "sp"}, ("sp",)),
    "cc": Case("cnn", {"name": "cc", "embed_dim": 8}, ("cc",), state=True),
    "rkd": Case("cnn", {"name": "rkd"}, ("rkd_dist", "rkd_angle")),
    "pkt": Case("cnn", {"name": "pkt"}, ("pkt",)),
    "crd": Case("cnn", {"name": "crd", "nce_k": 64, "feat_dim": 16}, ("crd",), state=True),
    # self-distillation
    "byot": Case("cnn_self", {"name": "byot"}, ("byot_ce", "byot_kd", "byot_feat"), state=True),
    "cs_kd": Case("mlp_self", {"name": "cs_kd"}, ("cs_kd_ce", "cs_kd")),
    "dlb": Case("mlp_self", {"name": "dlb"}, ("dlb_ce", "dlb")),
    "ps_kd": Case("mlp_self", {"name": "ps_kd"}, ("ps_kd",), state=True),
    "tf_kd_reg": Case("mlp_self", {"name": "tf_kd_reg"}, ("tf_kd_ce", "tf_kd_reg")),
    "tf_kd_self": Case("mlp_copy", {"name": "tf_kd_self"}, ("tf_kd_ce", "tf_kd_self")),
    "skd_nlp": Case("lm", {"name": "skd_nlp", "k": 3, "tau": 0.2}, ("skd_ce", "skd")),
    # token-level divergences of language-model distillation
    **{m: Case("lm_kd", {"name": m, **extra}, (m,)) for m, extra in {
        "fkl": {}, "rkl": {}, "jsd": {"beta": 0.5}, "skew_fkl": {"alpha": 0.1}, "skew_rkl": {"alpha": 0.1},
        "tvd": {}, "akl": {}}.items()},
    # subclass distillation
    "subclass_aux": Case("subclass", {"name": "subclass_aux"}, ("subclass_aux",)),
    "subclass_kd": Case("subclass", {"name": "subclass_kd"}, ("subclass_kd", "subclass_ce")),
    # ranking
    "bpr": Case("rank", {"name": "bpr", "reg": 0.01}, ("bpr", "bpr_reg")),
    "rd": Case("rank", {"name": "rd", "K": 5}, ("rd",)),
    "cd": Case("rank", {"name": "cd", "K": 5, "M": 20}, ("cd",)),
    "rrd": Case("rank", {"name": "rrd", "K": 5, "L": 20, "M": 20}, ("rrd",)),
    "de": Case("rank", {"name": "de", "lam": 0.05}, ("de",), state=True, summary=("incons", "incons_top")),
    "pckd": Case("rank_gcn", {"name": "pckd", "M": 20, "Q": 5}, ("de", "pckd_reg"), state=True, summary=("incons", "incons_top")),
    # instruments: no loss of their own; they report in the summary
    "record_w": Case("mlp", {"name": "record_w"}, (), state=True, with_ce=True, summary=("w_mean", "w_q_spearman")),
    "geometry": Case("hierarchy_self", {"name": "geometry"}, (), with_ce=True, summary=("geometry_score",)),
    "teacher_check": Case("mlp", {"name": "teacher_check"}, (), with_ce=True, summary=("teacher_ece",)),
}


def test_every_registered_method_has_a_case():
    missing = sorted(set(METHODS.names()) - set(CASES))
    assert not missing, f"registered method(s) without a contract case in tests/test_method_contract.py: {missing}"
    assert not sorted(set(CASES) - set(METHODS.names())), "cases for methods that are not registered"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One store for the module: the setups' teachers are trained once and reused by key."""
    return str(tmp_path_factory.mktemp("contract") / "store")


def run_case(tmp_path: Path, store: str, name: str, setup: str, methods: list[dict], lr: float = 0.01) -> dict:
    cfg = {"name": name, "seeds": [0], "device": "cpu", **SETUPS[setup], "methods": methods,
           "train": {**ONE_EPOCH, "optimizer": {**ADAM, "lr": lr}}}
    assert cli("run", write_config(tmp_path, cfg, name=f"{name}.yaml"), "--store", store, "--quiet") == 0
    (row,) = [r for r in RunStore(store).rows() if r["name"] == name and r["kind"] == "student"]
    return row


@pytest.fixture(scope="module")
def initial_student(store, tmp_path_factory):
    """setup -> the student's weights as the run initialised them: a run whose steps (lr 1e-30)
    cannot move a weight by more than ~1e-28."""
    cache: dict[str, dict] = {}

    def get(setup: str) -> dict[str, torch.Tensor]:
        if setup not in cache:
            row = run_case(tmp_path_factory.mktemp(setup), store, f"init-{setup}", setup,
                           [{"name": SUPERVISED.get(setup, "ce")}], lr=1e-30)
            cache[setup] = checkpoint(row["path"])["model"]
        return cache[setup]

    return get


def moved(before: torch.Tensor, after: torch.Tensor) -> bool:
    return bool((before.double() - after.double()).abs().max() > 1e-12)


def is_parameter(key: str) -> bool:
    return not key.endswith(("running_mean", "running_var", "num_batches_tracked"))


@pytest.mark.parametrize("method", sorted(CASES))
def test_method_contract(method, store, tmp_path, initial_student):
    case = CASES[method]
    methods = [{"name": "ce"}, case.method] if case.with_ce else [case.method]
    init = initial_student(case.setup)
    row = run_case(tmp_path, store, f"contract-{method}", case.setup, methods)
    run = Path(row["path"])

    summary = json.loads((run / "summary.json").read_text())
    assert row["status"] == "done" and summary["epochs"] == 1
    for key in case.summary:
        assert key in summary and summary[key] is not None, f"{method}: summary lacks {key}"

    (epoch,) = history(run)
    for term in case.terms:
        value = epoch.get(f"train_{term}")
        assert isinstance(value, float) and math.isfinite(value) and value != 0, f"{method}: train_{term} = {value!r}"

    ck = checkpoint(run)  # torch.load(weights_only=True)
    student = ck["model"]
    assert student.keys() == init.keys()
    assert any(moved(init[k], student[k]) for k in init if is_parameter(k)), (
        f"{method}: no student weight changed in one epoch: its gradient did not reach the student")

    i = methods.index(case.method)
    own = [k for k in ck["module"] if k.startswith(f"methods.{i}.")]
    assert bool(own) == case.state, f"{method}: checkpointed state of its own {own[:3]}, expected {case.state}"


def test_geometry_without_superclasses_or_teacher_says_what_is_missing(tmp_path, store, capsys):
    # A `teacher:` section is there, but no method learns from it, so no teacher is built.
    cfg = {"name": "geometry-alone", "seeds": [0], "device": "cpu", **SETUPS["mlp"],
           "methods": [{"name": "ce"}, {"name": "geometry"}], "train": ONE_EPOCH}
    assert cli("run", write_config(tmp_path, cfg), "--store", store, "--quiet") == 2
    assert "a method that uses it (e.g. kd)" in capsys.readouterr().err
