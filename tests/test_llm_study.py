"""The built-in LLM study (`configs/llm/[1-4]_*.yaml`, pipeline `lm_compare`) and its data
(`pydoc_bpe`): CPython's documentation split by document with no paragraph in two splits, a
byte-level BPE tokenizer trained once on the training documents and shared by teacher and
student, one teacher for every arm, and all seven arms trained under one budget across the
four configs (each repeating the CE arm, the same student bit for bit)."""

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
from kdlab.pipelines.distill import ExperimentResult
from kdlab.pipelines.lm_compare import LMComparison
from kdlab.stages.runner import run_experiment
from kdlab.store.runstore import RunStore

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


# The study's four configs, run in this order in one store (`make llm-study`).
CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "llm").glob("[0-9]_*.yaml"))
SHARED = ("seeds", "device", "data", "teacher", "student", "train")
TOY = ["seeds=[0]", "train.epochs=1", "teacher.train.epochs=1", "data.train_fraction=0.05", "data.params.seq_len=16",
       "data.params.tokens=300", "teacher.model.hf.config.n_embd=16", "teacher.model.hf.config.n_layer=1",
       "student.hf.config.n_embd=8", "student.hf.config.n_layer=1", "pipeline.sample.prompt_len=4",
       "pipeline.sample.gen_len=8"]
TOY_RECIPES = {"seqkd": ["pipeline.recipes.seqkd.prompt_len=4", "pipeline.recipes.seqkd.gen_len=13"],
               "gkd": ["pipeline.recipes.gkd.prompt_len=4"]}


def toy(config: Path, *more: str) -> list[str]:
    """The toy-size overrides for one of the study's configs (its recipes' lengths included)."""
    recipes = load_config(config).pipeline.params().recipes
    return [*TOY, *(o for name in recipes for o in TOY_RECIPES[name]), *more]


def test_the_study_is_four_configs_with_one_data_teacher_student_and_budget():
    exps = [load_config(c) for c in CONFIGS]
    assert [c.name for c in CONFIGS] == ["1_teacher_seqkd.yaml", "2_kl.yaml", "3_jsd_skew.yaml", "4_gkd.yaml"]
    # Everything that fixes the tokenizer, the teacher's key and the budget is the same in all four.
    for field in SHARED:
        assert len({str(getattr(e, field).model_dump(mode="json") if field not in ("seeds", "device")
                        else getattr(e, field)) for e in exps}) == 1, field
    assert len({str(e.pipeline.params().sample) for e in exps}) == 1
    # Every config repeats the CE arm (its baseline); together they hold the seven arms, once each.
    assert all(e.method_sets()["ce"][0].name == "ce" for e in exps)
    arms = [a for e in exps for a in e.method_sets() if a != "ce"]
    assert sorted(["ce", *arms]) == sorted(ARMS) and len(arms) == len(ARMS) - 1
    assert {n: r.name for e in exps for n, r in e.pipeline.params().recipes.items()} == {"seqkd": "seqkd",
                                                                                       "gkd": "on_policy"}
    assert exps[0].teacher.seed == 0 and exps[0].seeds == [0, 1, 2] and exps[0].train.epochs == 4


def test_the_configs_in_order_train_tokenizer_and_teacher_once_and_every_arm_under_one_budget(tmp_path, monkeypatch):
    store = tmp_path / "store"
    monkeypatch.setenv("KDLAB_HOME", str(store))  # the tokenizer is kept beside the runs
    outs = [run_experiment(load_config(c, toy(c)), store=str(store), progress=False) for c in CONFIGS]
    runs = RunStore(str(store)).rows()
    # The first config trains the tokenizer and the teacher; the others reuse both by key, and
    # the token-level arms of configs 2 and 3 read one logit cache.
    assert [r["kind"] for r in runs].count("teacher") == 1
    for sub in ("tokenizers", "cache", "generations"):
        assert len([p for p in (store / sub).iterdir() if p.is_dir()]) == 1, sub
    res = {a: o.result.results[a][0] for o in outs for a in o.result.results}
    assert sorted(res) == sorted(ARMS) and all(o.result.baseline == "ce" for o in outs)
    # The CE arm repeated in every config is the same student, bit for bit: every arm is paired
    # with the CE of its own seed in its own table.
    assert len({o.result.results["ce"][0]["test_ppl"] for o in outs}) == 1
    # One budget: every arm of every config reads as many windows of as many tokens, in as many steps.
    assert len({v for o in outs for v in o.batches.values()}) == 1 and len({v for o in outs for v in o.tokens.values()}) == 1
    assert res["seqkd"]["generated"] and any("generated" in n for n in outs[0].result.notes)
    gkd = [r for r in runs if r["variant"] == "gkd"][0]
    assert history(gkd["path"])[0]["onpolicy_generated_batches"] >= 1
    for o in outs:
        assert list(o.samples) == ["teacher", *o.result.results] and all(isinstance(s, str) for s in o.samples.values())
        header, rows = o.rows()
        assert header[-3:] == ["steps", "tokens", "wall s / run"] and len({r[-3] for r in rows}) == 1
        col = header.index("− ce, same seed (last epoch)")
        assert [r[col] for r in rows] == ["–" if r[0] == "ce" else
                                          f"{res[r[0]]['test_ppl'] - res['ce']['test_ppl']:+.2f} ± 0.00" for r in rows]
    assert_pinned({"steps": outs[0].batches["ce"], "tokens": outs[0].tokens["ce"],
                   **{a: res[a]["test_ppl"] for a in ARMS}}, {"steps": 21, "tokens": 10320, "ce": 226.5876497742697, "fkl": 221.34476042800594, "rkl": 222.5244137356721,
                   "jsd": 221.8045873305943, "skew_fkl": 221.48586251466105, "seqkd": 288.425947906643,
                   "gkd": 226.08788840494128})

    # The first config again with another student: the teacher and its samples are reused.
    again = run_experiment(load_config(CONFIGS[0], toy(CONFIGS[0], "student.hf.config.n_embd=16")), store=str(store),
                           progress=False)
    runs = RunStore(str(store)).rows()
    assert [r["kind"] for r in runs].count("teacher") == 1
    assert not again.result.results["seqkd"][0]["generated"] and any("reused" in n for n in again.result.notes)
    assert len([p for p in (store / "tokenizers").iterdir() if p.is_dir()]) == 1


def test_the_table_pairs_each_arm_with_the_baseline_of_the_same_seed():
    run = lambda seed, ppl: {"seed": seed, "test_ppl": ppl, "best_test_ppl": ppl, "epochs": 2,  # noqa: E731
                             "mean_epoch_time": 1.0, "params": 10}
    res = ExperimentResult("s", "ppl", {"ce": [run(0, 500.0), run(1, 300.0)], "fkl": [run(1, 290.0), run(0, 480.0)]})
    header, rows = LMComparison(res, batches={"ce": 3, "fkl": 3}, tokens={"ce": 96, "fkl": 96}).rows()
    col = header.index("− ce, same seed (last epoch)")
    # Per seed fkl − ce is −20 and −10 (listed in another order): mean −15, std 7.07; unpaired,
    # the means differ by −15 too but the seeds' spread (141) would swamp it.
    assert [r[col] for r in rows] == ["–", "-15.00 ± 7.07"]
    assert header[-3:] == ["steps", "tokens", "wall s / run"] and rows[1][-3:] == ["6", "192", "2 ± 0"]


def test_a_recipe_for_a_variant_that_does_not_exist_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KDLAB_HOME", str(tmp_path))
    code, lines, err = run_bad(capsys, "run", CONFIGS[-1], *toy(CONFIGS[-1]), "pipeline.recipes.gdk={name: on_policy}",
                               "--store", tmp_path / "runs", "--quiet")
    assert_clear(code, lines, err, "pipeline.recipes names gdk", "not among the variants")


def test_lm_compare_refuses_data_that_is_not_text(tmp_path, capsys):
    code, lines, err = run_bad(capsys, "run", CONFIGS[0], "data.name=digits", "data.params={}", "--store",
                               tmp_path / "runs", "--quiet")
    assert_clear(code, lines, err, "pipeline 'lm_compare' compares language models", "digits")
