"""The built-in LLM study (`configs/llm/study.yaml`, pipeline `lm_compare`) and its data
(`pydoc_bpe`): CPython's documentation split by document with no paragraph in two splits, a
byte-level BPE tokenizer trained once on the training documents and shared by teacher and
student, one teacher for every arm, and all seven arms trained under one budget."""

import threading
from pathlib import Path

import pytest
import torch

import kdlab.data.bpe as bpe
from helpers import assert_clear, assert_pinned, history, run_bad
from kdlab.config.load import load_config
from kdlab.data.pydoc_bpe import documents, pydoc_bpe_dataset, split_documents
from kdlab.data.pydoc_topics import near_duplicate_groups
from kdlab.data.text_corpus import pydoc_topic_texts
from kdlab.stages.runner import run_experiment
from kdlab.store.runstore import RunStore

STUDY = Path(__file__).resolve().parents[1] / "configs" / "llm" / "study.yaml"
ARMS = ["ce", "fkl", "rkl", "jsd", "skew_fkl", "seqkd", "gkd"]


def test_documents_keep_every_paragraph_once_and_splits_share_no_document():
    topics = pydoc_topic_texts()
    docs = documents(topics, 0.5)
    paras = [p for name in sorted(docs) for p in docs[name].split("\n\n")]
    groups = near_duplicate_groups(paras, 0.5)
    assert len(set(groups)) == len(groups)  # no two kept paragraphs are near duplicates
    assert "compound" in docs and "if" not in docs  # `if` only repeats what `compound` holds
    parts = split_documents(docs, 0, 0.1, 0.1)
    names = [n for s in parts.values() for n in s]
    assert sorted(names) == sorted(docs) and len(set(names)) == len(names)
    assert (parts["test"][:3], parts["val"][:3], len(docs)) == (
        ["atom-literals", "await", "binary"], ["async", "bltin-type-objects", "class"], 68)
    assert split_documents(docs, 1, 0.1, 0.1)["test"] != parts["test"]  # the split seed picks the documents


def test_bpe_tokenizer_is_trained_on_the_training_documents_once_and_reused(tmp_path, monkeypatch):
    data = pydoc_bpe_dataset(seq_len=64, tokens=512, tokenizer_dir=str(tmp_path))
    tok = data.meta["hf_tokenizer"]
    assert tok["size"] == 512 == data.num_classes and Path(tok["path"]).parent == tmp_path
    assert data.meta["test_20gram_overlap"] == 0.0 and data.meta["val_20gram_overlap"] == 0.0
    assert_pinned({"fp": tok["fingerprint"], **data.meta["tokens"]},
                  {"fp": "8be493e26d0b1c98", "train": 136844, "val": 16939, "test": 17904})
    monkeypatch.setattr(bpe, "train_bpe", lambda *a: pytest.fail("the stored tokenizer was trained again"))
    again = pydoc_bpe_dataset(seq_len=64, tokens=512, tokenizer_dir=str(tmp_path))
    assert again.meta["hf_tokenizer"] == tok and torch.equal(again.test["x"], data.test["x"])
    monkeypatch.undo()
    # Another split seed trains on other documents: another tokenizer, in another folder.
    other = pydoc_bpe_dataset(seed=1, seq_len=64, tokens=512, tokenizer_dir=str(tmp_path / "o"))
    assert other.meta["hf_tokenizer"]["fingerprint"] != tok["fingerprint"]


def test_concurrent_builders_train_the_tokenizer_once(tmp_path, monkeypatch):
    calls = []
    real = bpe.train_bpe
    monkeypatch.setattr(bpe, "train_bpe", lambda *a: calls.append(1) or real(*a))
    texts = ["def f(x):\n    return x + 1\n"] * 50
    out = []
    threads = [threading.Thread(target=lambda: out.append(bpe.cached_bpe(texts, 300, tmp_path / "t")))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(out) == 3 and {len(t) for t in out} == {len(out[0])}


TOY = ["seeds=[0]", "train.epochs=1", "teacher.train.epochs=1", "data.train_fraction=0.05", "data.params.seq_len=16",
       "data.params.tokens=300", "teacher.model.hf.config.n_embd=16", "teacher.model.hf.config.n_layer=1",
       "student.hf.config.n_embd=8", "student.hf.config.n_layer=1", "pipeline.recipes.seqkd.prompt_len=4",
       "pipeline.recipes.seqkd.gen_len=13", "pipeline.recipes.gkd.prompt_len=4", "pipeline.sample.prompt_len=4",
       "pipeline.sample.gen_len=8"]


def test_study_trains_the_tokenizer_and_teacher_once_and_every_arm_under_one_budget(tmp_path, monkeypatch):
    store = tmp_path / "store"
    monkeypatch.setenv("KDLAB_HOME", str(store))  # the tokenizer is kept beside the runs
    out = run_experiment(load_config(STUDY, TOY), store=str(store), progress=False)
    res = out.result
    assert list(res.results) == ARMS and res.baseline == "ce"
    assert len([p for p in (store / "tokenizers").iterdir() if p.is_dir()]) == 1
    runs = RunStore(str(store)).rows()
    assert [r["kind"] for r in runs].count("teacher") == 1
    # One budget: every arm reads as many windows of as many tokens, in as many steps.
    assert len(set(out.batches.values())) == 1 and len(set(out.tokens.values())) == 1
    assert res.results["seqkd"][0]["generated"] and any("generated" in n for n in res.notes)
    gkd = [r for r in runs if r["variant"] == "gkd"][0]
    assert history(gkd["path"])[0]["onpolicy_generated_batches"] >= 1
    assert list(out.samples) == ["teacher", *ARMS] and all(isinstance(s, str) for s in out.samples.values())
    header, rows = out.rows()
    assert header[-3:] == ["steps", "tokens", "wall s / run"] and len({r[-3] for r in rows}) == 1
    assert_pinned({"steps": out.batches["ce"], "tokens": out.tokens["ce"],
                   **{a: res.results[a][0]["test_ppl"] for a in ARMS}}, {"steps": 21, "tokens": 10320, "ce": 226.5876497742697, "fkl": 221.34476042800594, "rkl": 222.5244137356721,
                   "jsd": 221.8045873305943, "skew_fkl": 221.48586251466105, "seqkd": 288.425947906643,
                   "gkd": 226.08788840494128})

    # A second study from the same data and teacher with another student: nothing is made again.
    again = run_experiment(load_config(STUDY, [*TOY, "student.hf.config.n_embd=16"]), store=str(store), progress=False)
    runs = RunStore(str(store)).rows()
    assert [r["kind"] for r in runs].count("teacher") == 1
    assert not again.result.results["seqkd"][0]["generated"] and any("reused" in n for n in again.result.notes)
    assert len([p for p in (store / "tokenizers").iterdir() if p.is_dir()]) == 1


def test_a_recipe_for_a_variant_that_does_not_exist_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KDLAB_HOME", str(tmp_path))
    code, lines, err = run_bad(capsys, "run", STUDY, *TOY, "pipeline.recipes.gdk={name: on_policy}",
                               "--store", tmp_path / "runs", "--quiet")
    assert_clear(code, lines, err, "pipeline.recipes names gdk", "not among the variants")


def test_lm_compare_refuses_data_that_is_not_text(tmp_path, capsys):
    code, lines, err = run_bad(capsys, "run", STUDY, "data.name=digits", "data.params={}", "--store",
                               tmp_path / "runs", "--quiet")
    assert_clear(code, lines, err, "pipeline 'lm_compare' compares language models", "digits")
