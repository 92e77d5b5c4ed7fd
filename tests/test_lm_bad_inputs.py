"""Bad input to language-model distillation, refused through the CLI in one or two lines with
exit code 2 before anything trains: teacher and student with different vocabularies or
tokenizers, a prompt longer than the data's windows, sequences beyond a model's positions, a
model that cannot decode, and invalid generation settings."""

import copy

import pytest

from helpers import assert_clear, run_bad, write_config

DATA = {"name": "pydoc", "params": {"seq_len": 12, "max_tokens": 3000, "max_vocab": 100}, "batch_size": 16}
LSTM = {"name": "lstm_lm", "params": {"emb_dim": 8, "hidden": 8}}
TRANSFORMER = {"name": "transformer_lm", "params": {"d_model": 16, "nhead": 2, "layers": 1, "ff": 32}}
BASE = {"name": "bad", "seeds": [0], "device": "cpu", "data": DATA, "teacher": {"model": TRANSFORMER}, "student": LSTM,
        "methods": [{"name": "fkl"}], "train": {"epochs": 1}}
SEQKD = {"name": "seqkd", "prompt_len": 4, "gen_len": 6}


def config(pipeline=None, **changes):
    cfg = copy.deepcopy(BASE)
    if pipeline is not None:
        cfg["pipeline"] = pipeline
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = cfg
        for p in parents:
            node = node[p]
        node[last] = value
    return cfg


CASES = {
    "teacher data with another vocabulary size": (
        config(teacher={"model": TRANSFORMER, "data": {**DATA, "params": {**DATA["params"], "max_vocab": 80}}}),
        ["another tokenizer", "same data settings"]),
    "teacher data with another tokenizer of the same size": (
        config(SEQKD, teacher={"model": TRANSFORMER, "data": {**DATA, "params": {**DATA["params"], "lowercase": False}}}),
        ["another tokenizer", "token ", "same data settings"]),
    "hf teacher with another vocabulary": (
        config(teacher={"model": {"hf": {"config": {"model_type": "gpt2", "n_layer": 1, "n_embd": 16, "n_head": 2,
                                                    "vocab_size": 50, "bos_token_id": 0, "eos_token_id": 0},
                                           "kind": "causal_lm"}}}),
        ["vocabulary of 50 tokens", "data's has 100"]),
    "seqkd prompt beyond the windows": (config({**SEQKD, "prompt_len": 20}), ["prompt_len 20 exceeds", "seq_len"]),
    "on_policy prompt beyond the windows": (config({"name": "on_policy", "prompt_len": 13}, student=TRANSFORMER),
                                            ["prompt_len 13 exceeds the data's sequence length 12"]),
    "seqkd beyond the teacher's positions": (config({**SEQKD, "gen_len": 20}),
                                             ["holds 12 positions", "prompt_len + gen_len - 1 is 23", "params.max_len"]),
    "seqkd teacher that cannot decode": (  # an embedding of width V gives (B, T, V) "logits" but has no cache
        config(SEQKD, teacher={"model": {"import": "torch.nn:Embedding",
                                         "params": {"num_embeddings": 100, "embedding_dim": 100}}}),
        ["cannot decode token by token", "causal LM"]),
    "seqkd on classification data": (
        config(SEQKD, data={"name": "hierarchy", "params": {"num_superclasses": 2, "classes_per_superclass": 2, "dim": 4,
                                                            "samples_per_class": 10}},
               student={"name": "mlp"}, teacher={"model": {"name": "mlp"}}, methods=[{"name": "ce"}]),
        ["distils language models", "hierarchy"]),
    "sampling settings with greedy decoding": (config({**SEQKD, "decode": {"temperature": 0.7}}),
                                               ["temperature applies to strategy sample only"]),
    "one beam": (config({**SEQKD, "decode": {"strategy": "beam", "beams": 1}}), ["beams", "greater than or equal to 2"]),
    "nucleus above 1": (config({**SEQKD, "decode": {"strategy": "sample", "top_p": 1.5}}), ["top_p"]),
    "on_policy with beam search": (config({"name": "on_policy", "decode": {"strategy": "beam"}}, student=TRANSFORMER),
                                   ["sample (GKD) or greedy, not beam"]),
    "on_policy lam above 1": (config({"name": "on_policy", "lam": 1.5}, student=TRANSFORMER), ["lam", "1"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_refused_in_one_or_two_lines(case, tmp_path, capsys):
    cfg, needles = CASES[case]
    code, lines, err = run_bad(capsys, "run", write_config(tmp_path, cfg), "--store", tmp_path / "store")
    assert_clear(code, lines, err, *needles)
    assert not (tmp_path / "store" / "generations").exists()
