"""Sequence-level distillation end to end (pipeline `seqkd`): the teacher's outputs are its
greedy continuations (checked against full forwards without a cache), generated once and
reused by a second student, and the student's training targets are exactly those outputs
(prompt positions ignored)."""

import copy
from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import load_file

import kdlab.stages.generations as generations
from helpers import assert_pinned
from kdlab.config.load import validate
from kdlab.methods.supervised import CE
from kdlab.stages.building import load_data
from kdlab.stages.runner import run_experiment
from kdlab.stages.teachers import load_teacher
from kdlab.store.runstore import RunStore

P, G = 6, 10
CFG = {
    "name": "seqkd_tiny",
    "seeds": [0],
    "device": "cpu",
    "data": {"name": "pydoc", "params": {"split": "contiguous", "seq_len": 12, "max_tokens": 3000, "max_vocab": 100},
             "batch_size": 16, "eval_batch_size": 64},
    "teacher": {"model": {"name": "transformer_lm",
                          "params": {"d_model": 32, "nhead": 2, "layers": 1, "ff": 64, "dropout": 0.0, "max_len": 24}}},
    "student": {"name": "lstm_lm", "params": {"emb_dim": 16, "hidden": 16, "dropout": 0.0}},
    "pipeline": {"name": "seqkd", "prompt_len": P, "gen_len": G},
    "variants": {"ce": [{"name": "ce"}], "ce_fkl": [{"name": "ce", "weight": 0.5}, {"name": "fkl", "weight": 0.5}]},
    "train": {"epochs": 2, "optimizer": {"name": "adam", "lr": 0.01, "weight_decay": 0.0}},
}


def greedy_reference(model, prompt, n):
    seq = prompt
    with torch.no_grad():
        for _ in range(n):
            seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    return seq[:, prompt.shape[1]:]


def test_seqkd_generates_once_and_students_train_on_the_teachers_greedy_outputs(store, monkeypatch):
    calls, targets = [], []
    real_continue = generations.continue_all
    monkeypatch.setattr(generations, "continue_all", lambda *a, **k: calls.append(1) or real_continue(*a, **k))
    real_ce = CE.forward

    def spy_ce(self, batch, s, t):  # the students' targets (the teacher trains with ce on 12-token windows)
        if batch["y"].shape[1] == P + G - 1:
            targets.append(batch["y"].clone())
        return real_ce(self, batch, s, t)

    monkeypatch.setattr(CE, "forward", spy_ce)

    exp = validate(CFG)
    res = run_experiment(exp, store=store, progress=False)
    assert len(calls) == 1  # two students (variants ce, ce_fkl), one generation
    ce, fkl = res.results["ce"][0], res.results["ce_fkl"][0]
    assert ce["generated"] and ce["generations"] == fkl["generations"]
    assert_pinned({"ce": ce["test_ppl"], "ce_fkl": fkl["test_ppl"], "teacher": res.teachers[0]["test_ppl"]},
                  {"ce": 46.46985, "ce_fkl": 29.54121, "teacher": 19.59825})

    # The stored outputs are the teacher's greedy continuations of every training window's prompt.
    folder = Path(store, "generations", ce["generations"])
    stored = load_file(str(folder / "tokens.safetensors"))
    data = load_data(exp.data)
    prompts = data.train.tensors["x"][:, :P]
    assert torch.equal(stored["prompts"], prompts)
    teacher_run = next(r for r in RunStore(store).rows() if r["kind"] == "teacher")
    teacher = load_teacher(exp.teacher, data, str(Path(teacher_run["path"], "checkpoints", "best.pt")))
    reference = greedy_reference(teacher, prompts, G)
    assert torch.equal(stored["outputs"], reference)

    # The ce student's first epoch saw every training sequence once: its targets are exactly
    # the teacher's outputs, the positions that predict prompt tokens ignored (-100).
    steps = -(-len(prompts) // exp.data.batch_size)
    first_epoch = torch.cat(targets[:steps])
    assert (first_epoch[:, : P - 1] == -100).all() and first_epoch.shape[1] == P + G - 1
    assert Counter(map(tuple, first_epoch[:, P - 1 :].tolist())) == Counter(map(tuple, reference.tolist()))
    assert not torch.equal(reference, data.train.tensors["x"][:, P : P + G])  # not the data's own text

    # A second student of the same teacher, data and decoding reuses the stored outputs.
    other = copy.deepcopy(CFG)
    other["student"] = {"name": "transformer_lm",
                        "params": {"d_model": 16, "nhead": 2, "layers": 1, "ff": 32, "dropout": 0.0, "max_len": 24}}
    other["variants"] = {"ce": [{"name": "ce"}]}
    mtime = (folder / "tokens.safetensors").stat().st_mtime_ns
    again = run_experiment(validate(other), store=store, progress=False)
    assert len(calls) == 1 and again.results["ce"][0]["generated"] is False
    assert again.results["ce"][0]["generations"] == ce["generations"]
    assert (folder / "tokens.safetensors").stat().st_mtime_ns == mtime

    # Other decoding settings are other outputs: generated anew, under another key.
    beam = copy.deepcopy(other)
    beam["pipeline"]["decode"] = {"strategy": "beam", "beams": 2}
    third = run_experiment(validate(beam), store=store, progress=False)
    assert len(calls) == 2 and third.results["ce"][0]["generations"] != ce["generations"]
