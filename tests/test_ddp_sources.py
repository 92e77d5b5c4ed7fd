"""Two CPU processes under torchrun (gloo) give the metrics of a single-process run for models
and data brought from outside kdlab: Hugging Face BERTs (a teacher folder trained as the first
stage, a student from a config) on a token-classification table, and data read sample by sample
(streamed: each rank reads its share of every global batch)."""

import json
from pathlib import Path

import pytest

from helpers import TINY, single_and_two_process_runs, write_config
from kdlab.store.runstore import RunStore

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}  # per-rank draws would differ


def _compare(single, multi, metric, kinds=("teacher", "student")):
    a, b = RunStore(single).rows(), RunStore(multi).rows()
    assert sorted(r["kind"] for r in b) == sorted(kinds)  # each run written once, by rank 0
    for kind in kinds:
        ra, rb = (next(x for x in rows if x["kind"] == kind) for rows in (a, b))
        sa, sb = ra["summary"], rb["summary"]
        # the same global batches and averaged gradients: equal up to float summation order,
        # which can flip a near-tie prediction or two
        assert sb["test_loss"] == pytest.approx(sa["test_loss"], rel=1e-3)
        assert abs(sb[f"test_{metric}"] - sa[f"test_{metric}"]) <= 1.0
        ha = [json.loads(l) for l in Path(ra["path"], "metrics.jsonl").open()]
        hb = [json.loads(l) for l in Path(rb["path"], "metrics.jsonl").open()]
        for ea, eb in zip(ha, hb, strict=True):  # train losses are reduced over ranks, not per rank
            assert eb["train_total"] == pytest.approx(ea["train_total"], rel=1e-3)


@pytest.mark.slow
@pytest.mark.ddp
def test_hf_bert_token_classifiers_under_two_process_ddp(tmp_path):
    from transformers import AutoConfig, AutoModelForTokenClassification

    from test_token_classification import BERT, PIECES, SMALL, WHOLE, _data, _sentences, _wordpiece

    (tmp_path / "ner.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _sentences()))
    tok = _wordpiece(tmp_path / "tok")
    config = AutoConfig.for_model(**{**BERT, **NO_DROPOUT, "vocab_size": 4 + len(WHOLE) + len(PIECES), "num_labels": 3})
    AutoModelForTokenClassification.from_config(config).save_pretrained(tmp_path / "teacher")
    adam = {"optimizer": {"name": "adam", "lr": 0.003, "weight_decay": 0.0}}
    cfg = {"name": "ner-ddp", "seeds": [0], "device": "cpu", "data": _data(tmp_path, tok),
           "teacher": {"model": {"hf": {"path": str(tmp_path / "teacher"), "kind": "token_classification"}},
                       "train": {"epochs": 2, **adam}},
           "student": {"hf": {"config": {**SMALL, **NO_DROPOUT}, "kind": "token_classification"}},
           "methods": [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5, "tau": 2}],
           "train": {"epochs": 2, **adam}}
    single, multi = single_and_two_process_runs(tmp_path, write_config(tmp_path, cfg))
    _compare(single, multi, "acc")


# Loaded at start-up by every Python process of the runs (sitecustomize): logs the sample
# positions of each streamed training batch, per process (single, rank0, rank1).
BATCH_LOG = """
import json, os
from kdlab.engine import streaming

_iter = streaming.StreamLoader.__iter__

def _logged(self):
    name = f"rank{os.environ['RANK']}" if "WORLD_SIZE" in os.environ else "single"
    for batch in _iter(self):
        if self.shuffle:  # training batches
            with open(os.path.join(os.environ["KDLAB_TEST_BATCH_LOG"], name + ".jsonl"), "a") as f:
                f.write(json.dumps(batch["index"].tolist()) + "\\n")
        yield batch

streaming.StreamLoader.__iter__ = _logged
"""


@pytest.mark.slow
@pytest.mark.ddp
def test_streamed_data_under_two_process_ddp(tmp_path):
    """Digits read sample by sample by a loader worker on each rank; MLPs without batch norm or
    dropout, so one process and two see the same global batches and gradients. Each rank reads
    its own half of every global batch of the single-process run, and nothing else."""
    import os

    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(BATCH_LOG)
    (tmp_path / "log").mkdir()
    env = {"PYTHONPATH": f"{tmp_path / 'hook'}{os.pathsep}{os.getcwd()}", "KDLAB_TEST_BATCH_LOG": str(tmp_path / "log")}
    cfg = {**TINY, "data": {**TINY["data"], "stream": True, "workers": 1},
           "train": {"epochs": 2, "optimizer": {"name": "sgd", "lr": 0.1}}}
    single, multi = single_and_two_process_runs(tmp_path, write_config(tmp_path, cfg), env)
    _compare(single, multi, "top1")
    logs = {n: [json.loads(l) for l in (tmp_path / "log" / f"{n}.jsonl").read_text().splitlines()]
            for n in ("single", "rank0", "rank1")}
    # teacher then student, 2 epochs each, every training batch of the split
    assert len(logs["single"]) == len(logs["rank0"]) == len(logs["rank1"]) == 2 * 2 * 20
    for whole, a, b in zip(logs["single"], logs["rank0"], logs["rank1"]):
        assert not set(a) & set(b) and sorted(a + b) == sorted(whole) and abs(len(a) - len(b)) <= 1
