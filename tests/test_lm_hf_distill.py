"""Distilling with Hugging Face causal LMs (a tiny GPT-2 built from a config, its vocabulary
from the data): skd_nlp (which reads GPT-2's output embedding), kd and the token-level
divergences train a GPT-2 student; sequence-level KD generates with a GPT-2 teacher through
`generate`, and on-policy distillation samples from a GPT-2 student."""

import copy
import json
from pathlib import Path

from helpers import assert_pinned, history
from kdlab.config.load import validate
from kdlab.stages.runner import run_experiment

GPT2 = {"model_type": "gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 24, "bos_token_id": 0, "eos_token_id": 0}
CFG = {
    "name": "hf_lm",
    "seeds": [0],
    "device": "cpu",
    "data": {"name": "pydoc", "params": {"split": "contiguous", "seq_len": 12, "max_tokens": 3000, "max_vocab": 100},
             "batch_size": 16, "eval_batch_size": 64},
    "teacher": {"model": {"name": "transformer_lm", "params": {"d_model": 32, "nhead": 2, "layers": 1, "ff": 64, "dropout": 0.0,
                                                               "max_len": 24}},
                "train": {"epochs": 2, "optimizer": {"name": "adam", "lr": 0.01, "weight_decay": 0.0}}},
    "student": {"hf": {"config": {**GPT2, "n_embd": 16}, "kind": "causal_lm"}},
    "train": {"epochs": 1, "optimizer": {"name": "adam", "lr": 0.005, "weight_decay": 0.0}},
}


def test_ce_skd_nlp_kd_and_divergences_train_a_gpt2_student(store):
    cfg = copy.deepcopy(CFG)
    cfg["variants"] = {
        "ce": [{"name": "ce"}],
        "skd_nlp": [{"name": "skd_nlp", "lam": 0.5, "k": 3, "tau": 0.2}],
        "kd": [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5, "tau": 2.0}],
        "rkl": [{"name": "rkl"}],
    }
    res = run_experiment(validate(cfg), store=store, progress=False)
    ppl = {v: r[0]["test_ppl"] for v, r in res.results.items()}
    assert_pinned(ppl, {"ce": 56.22852, "skd_nlp": 56.77369, "kd": 54.40680, "rkl": 56.71513})
    assert len({round(v, 6) for v in ppl.values()}) == 4  # same init and data order: only the loss differs
    runs = {v: Path(store).glob(f"{r[0]['run_id']}") for v, r in res.results.items()}
    terms = {v: history(next(p))[-1] for v, p in runs.items()}
    assert terms["skd_nlp"]["train_skd"] > 0 and terms["kd"]["train_kd"] > 0 and terms["rkl"]["train_rkl"] > 0
    # the student is saved as a Hugging Face folder as well
    assert (Path(store, res.results["rkl"][0]["run_id"], "hf", "config.json")).is_file()


def test_seqkd_with_a_gpt2_teacher_and_on_policy_with_a_gpt2_student(store):
    seq = copy.deepcopy(CFG)
    seq["teacher"]["model"] = {"hf": {"config": GPT2, "kind": "causal_lm"}}
    seq["student"] = {"name": "lstm_lm", "params": {"emb_dim": 16, "hidden": 16, "dropout": 0.0}}
    seq["pipeline"] = {"name": "seqkd", "prompt_len": 4, "gen_len": 8, "decode": {"strategy": "sample", "top_k": 10}}
    res = run_experiment(validate(seq), store=store, progress=False)
    row = res.results["main"][0]
    meta = json.loads(Path(store, "generations", row["generations"], "meta.json").read_text())
    assert row["generated"] and meta["decode"]["strategy"] == "sample" and meta["count"] > 0

    gkd = copy.deepcopy(CFG)
    gkd["methods"] = [{"name": "fkl"}]
    gkd["pipeline"] = {"name": "on_policy", "lam": 1.0, "prompt_len": 4}
    res = run_experiment(validate(gkd), store=store, progress=False)
    rows = history(Path(store, res.results["main"][0]["run_id"]))
    assert rows[0]["onpolicy_generated_batches"] > 0 and rows[0]["onpolicy_data_batches"] == 0
    assert_pinned({"seqkd": row["test_ppl"], "gkd": res.results["main"][0]["test_ppl"]}, {"seqkd": 85.20354, "gkd": 56.37762})
