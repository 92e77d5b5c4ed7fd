"""End-to-end language-modelling runs on tiny corpora: perplexity falls, weights change, and
skd_nlp / token-level KD give results that differ from the CE baseline."""

import json
import random
from pathlib import Path

import pytest
import torch

from helpers import assert_pinned, cli, write_config
from kdlab.config.load import load_config, validate
from kdlab.engine.checkpoint import read_checkpoint
from kdlab.engine.evaluation import evaluate
from kdlab.seeding import seed_everything
from kdlab.models.build import build_model
from kdlab.stages.building import load_data
from kdlab.stages.runner import run_experiment
from kdlab.store.runstore import RunStore
from kdlab.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]


def grammar_text(n_sentences: int = 500, seed: int = 0) -> str:
    """A small regular language: an LM can learn it, so perplexity must fall far below V."""
    rng = random.Random(seed)
    adj = ["red", "big", "old", "quick"]
    noun = ["cat", "dog", "bird", "fox", "cow"]
    verb = ["sees", "likes", "chases"]
    lines = []
    for _ in range(n_sentences):
        lines.append(f"the {rng.choice(adj)} {rng.choice(noun)} {rng.choice(verb)} a {rng.choice(noun)} .")
    return "\n".join(lines)


def tiny_lm(path: str, variants: dict, epochs: int = 3) -> dict:
    return {
        "name": "tiny_lm",
        "seeds": [0],
        "device": "cpu",
        "data": {"name": "text", "params": {"path": path, "seq_len": 12}, "batch_size": 16, "eval_batch_size": 64},
        "student": {"name": "lstm_lm", "params": {"emb_dim": 16, "hidden": 16, "dropout": 0.0}},
        "variants": variants,
        "train": {"epochs": epochs, "optimizer": {"name": "adam", "lr": 0.03, "weight_decay": 0.0}},
    }


def initial_model_and_ppl(exp):
    """The student exactly as the run initialised it (train_stage seeds, then builds)."""
    data = load_data(exp.data)
    seed_everything(exp.seeds[0])
    model = build_model(exp.student, data)
    return model, evaluate(model, data.test, get_task(data))["ppl"], data.num_classes


def train_terms(store, run_id) -> dict:
    run = next(r for r in RunStore(store).rows() if r["id"] == run_id)
    return json.loads(Path(run["path"], "metrics.jsonl").read_text().splitlines()[-1])


def assert_trained(store, run_id, init_model):
    run = next(r for r in RunStore(store).rows() if r["id"] == run_id)
    state = read_checkpoint(str(Path(run["path"]) / "checkpoints" / "last.pt"))["model"]
    init = init_model.state_dict()
    changed = [k for k in init if not torch.equal(init[k], state[k])]
    assert "embedding.weight" in changed and any(k.startswith("rnn.") for k in changed)


def test_ce_and_skd_nlp_on_a_text_file(tmp_path, store):
    path = tmp_path / "corpus.txt"
    path.write_text(grammar_text())
    variants = {
        "ce": [{"name": "ce"}],
        "skd_nlp": [{"name": "skd_nlp", "lam": 0.5, "k": 3, "tau": 0.2}],
    }
    exp = validate(tiny_lm(str(path), variants))
    init_model, ppl0, vocab = initial_model_and_ppl(exp)
    assert ppl0 > 0.7 * vocab  # an untrained model is close to uniform
    res = run_experiment(exp, store=store, progress=False)
    assert res.metric == "ppl"
    ce, skd = res.results["ce"][0], res.results["skd_nlp"][0]
    for r in (ce, skd):
        assert r["test_ppl"] < 0.5 * ppl0
        assert_trained(store, r["run_id"], init_model)
    # Read once from this tiny run (see helpers.assert_pinned).
    assert_pinned({f"{k}_{m}": v[0][m] for k, v in res.results.items() for m in ("test_ppl", "test_acc")},
                  {"ce_test_ppl": 2.4472, "ce_test_acc": 64.6465, "skd_nlp_test_ppl": 2.45629, "skd_nlp_test_acc": 63.1313})
    # same init, data order and budget: only the loss differs, so the result must differ
    assert abs(ce["test_ppl"] - skd["test_ppl"]) > 1e-4
    assert train_terms(store, skd["run_id"])["train_skd"] > 0
    # the soft target's gold mass is logged (constant λ: target mass = 1 - λ(1 - q_y)) and summarised
    terms = train_terms(store, skd["run_id"])
    assert 0 < terms["train_skd_gold_mass"] < 1 and "skd_gold_mass" not in ce
    assert terms["train_skd_target_gold_mass"] == pytest.approx(1 - 0.5 * (1 - terms["train_skd_gold_mass"]))
    assert skd["skd_gold_mass"] == pytest.approx(terms["train_skd_gold_mass"])


@pytest.mark.slow
def test_token_level_kd_on_capped_pydoc(store):
    cfg = {
        "name": "tiny_kd_lm",
        "seeds": [0],
        "device": "cpu",
        "data": {"name": "pydoc", "params": {"split": "contiguous", "seq_len": 16, "max_tokens": 4000, "max_vocab": 150}, "batch_size": 16, "eval_batch_size": 64},
        "teacher": {"model": {"name": "transformer_lm", "params": {"d_model": 32, "nhead": 2, "layers": 1, "ff": 64, "dropout": 0.0}}},
        "student": {"name": "lstm_lm", "params": {"emb_dim": 16, "hidden": 16, "dropout": 0.0}},
        "variants": {
            "ce": [{"name": "ce"}],
            "kd": [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5, "tau": 2.0}],
        },
        "train": {"epochs": 3, "optimizer": {"name": "adam", "lr": 0.01, "weight_decay": 0.0}},
    }
    exp = validate(cfg)
    init_model, ppl0, _ = initial_model_and_ppl(exp)
    res = run_experiment(exp, store=store, progress=False)
    assert res.teachers[0]["test_ppl"] < 0.5 * ppl0
    ce, kd = res.results["ce"][0], res.results["kd"][0]
    for r in (ce, kd):
        assert r["test_ppl"] < 0.5 * ppl0
        assert_trained(store, r["run_id"], init_model)
    assert_pinned({f"{k}_{m}": v[0][m] for k, v in res.results.items() for m in ("test_ppl", "test_acc")},
                  {"ce_test_ppl": 32.0877, "ce_test_acc": 27.8646, "kd_test_ppl": 33.205, "kd_test_acc": 27.8646})
    assert train_terms(store, kd["run_id"])["train_kd"] > 0
    assert abs(ce["test_ppl"] - kd["test_ppl"]) > 1e-4


@pytest.mark.parametrize("name", ["skd_pydoc.yaml", "kd_pydoc.yaml"])
def test_builtin_lm_configs_validate(name):
    exp = load_config(ROOT / "configs" / "lm" / name)
    assert exp.data.name == "pydoc"


def test_missing_text_file_exits_2(tmp_path, store, capsys):
    cfg = tiny_lm(str(tmp_path / "nope.txt"), {"ce": [{"name": "ce"}]})
    assert cli("run", write_config(tmp_path, cfg), "--store", store, "--quiet") == 2
    assert "does not exist" in capsys.readouterr().err
