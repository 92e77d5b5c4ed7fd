"""The shipped language-modelling studies (`configs/lm/*.yaml`), each run end to end at toy size
through command-line-style overrides (one seed, a capped corpus, a tiny model): every arm the
config ships runs on the topic split and gives the figures read once from it, so a config that
stops loading, loses an arm or changes its method settings fails here."""

from pathlib import Path

import pytest

from helpers import assert_pinned
from kdlab.config.load import load_config
from kdlab.stages.runner import run_experiment

LM = Path(__file__).resolve().parents[1] / "configs" / "lm"
DATA = ["seeds=[0]", "train.epochs=3", "train.optimizer.lr=0.02", "data.params.max_tokens=3000", "data.params.max_vocab=200", "data.params.seq_len=12"]
LSTM = ["student.params.emb_dim=16", "student.params.hidden=16"]
GPT2 = ["student.hf.config.n_layer=1", "student.hf.config.n_embd=16", "student.hf.config.n_head=2",
        "student.hf.config.n_positions=16"]
TOY = {
    "skd_pydoc.yaml": [*DATA, *LSTM],
    "skd_pydoc_overfit.yaml": [*DATA, *LSTM],
    "skd_pydoc_gpt2.yaml": [*DATA, *GPT2],
    "kd_pydoc.yaml": [*DATA, *LSTM, "teacher.model.params.d_model=16", "teacher.model.params.nhead=2",
                      "teacher.model.params.ff=32", "teacher.model.params.layers=1"],
}
# Test perplexity of each arm (and the teacher) after the last epoch, read once.
PINS = {
    "skd_pydoc.yaml": {"ce": 39.77788, "ls": 40.19696, "skd_nlp": 40.36366},
    "skd_pydoc_overfit.yaml": {"ce": 38.92797, "ls": 41.30980, "skd_nlp": 40.59126},
    "skd_pydoc_gpt2.yaml": {"ce": 36.39178, "ls": 36.64288, "skd_nlp": 39.05425},
    "kd_pydoc.yaml": {"teacher": 33.89400, "ce": 39.88582, "kd": 41.27518},
}


@pytest.mark.parametrize("name", sorted(TOY))
def test_shipped_lm_study_runs_every_arm_at_toy_size(name, store):
    shipped = load_config(LM / name)
    exp = load_config(LM / name, TOY[name])
    assert exp.data.name == "pydoc" and exp.data.params.get("split", "topic") == "topic"
    out = run_experiment(exp, store=store, progress=False)
    assert out.metric == "ppl" and list(out.results) == list(shipped.variants)
    # last-epoch test perplexity: the toy runs may select epoch 1, before skd_nlp's λ ramp starts
    ppl = {v: runs[0]["test_ppl"] for v, runs in out.results.items()}
    if out.teachers:
        ppl["teacher"] = out.teachers[0]["test_ppl"]
    assert_pinned(ppl, PINS[name])
    if "skd_nlp" in out.results:  # the soft target's gold mass is summarised, below one
        assert 0 < out.results["skd_nlp"][0]["skd_gold_mass"] < 1
        assert "skd_gold_mass" not in out.results["ce"][0]
