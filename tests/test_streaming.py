"""Data larger than memory: streamed splits read by torch.utils.data workers give the batches,
and so the metrics, of the in-memory path for the same seed (order, rank shares, augmentation);
a streamed run killed mid-epoch resumes to the metrics of a run never killed; image folders,
tables (parquet, JSON lines, CSV, save_to_disk) and tokenised text as streamed sources; teacher
and student with different tokenizers or vocabularies are refused."""

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import TINY, assert_clear, cli, history, run_bad, write_config
from kdlab.config.schema import DataSpec
from kdlab.data.base import Split
from kdlab.data.stream import SampleSource, StreamSplit, TensorSource, decide, materialize
from kdlab.engine import streaming
from kdlab.engine.loader import TensorLoader, make_loader
from kdlab.stages.building import load_data
from kdlab.store.runstore import RunStore
from kdlab.tasks.base import get_task

ENV = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
CE = [{"name": "ce"}]


def _run(tmp_path, cfg, name):
    store = str(tmp_path / f"store-{name}")
    assert cli("run", write_config(tmp_path, cfg, name=f"{name}.yaml"), "--store", store, "--quiet") == 0
    rows = RunStore(store).rows()
    return {r["kind"]: history(r["path"], timeless=True) for r in rows}, {r["kind"]: r["path"] for r in rows}


def _spy(monkeypatch):
    """Counts batches the streaming loader yields (a run that never streamed counts 0)."""
    seen = {"batches": 0}
    original = streaming.StreamLoader.__iter__

    def counted(self):
        for batch in original(self):
            seen["batches"] += 1
            yield batch

    monkeypatch.setattr(streaming.StreamLoader, "__iter__", counted)
    return seen


# ------------------------------------------------------------------ loader
def _split(n=37):
    g = torch.Generator().manual_seed(0)
    return Split({"x": torch.randint(0, 255, (n, 1, 4, 4), generator=g, dtype=torch.uint8), "y": torch.arange(n) % 3})


def _flip(x, gen):
    return torch.where(torch.rand(len(x), 1, 1, 1, generator=gen) < 0.5, x.flip(-1), x)


@pytest.mark.parametrize("world", [1, 2])
def test_stream_loader_yields_tensor_loader_batches(world):
    """Same seeded order per epoch, the same share of every global batch per rank, the same
    batch augmentation, `index` the position in the split; workers change nothing."""
    split = _split()
    opts = dict(shuffle=True, seed=5, prepare=lambda x: x.float() / 255, augment=_flip, world=world)
    for rank in range(world):
        mem = TensorLoader(split, 8, rank=rank, **opts)
        streamed = make_loader(StreamSplit(TensorSource(split)), 8, workers=rank, rank=rank, **opts)
        assert isinstance(streamed, streaming.StreamLoader) and len(streamed) == len(mem) == 5
        for epoch in (0, 1):
            mem.set_epoch(epoch), streamed.set_epoch(epoch)
            a, b = list(mem), list(streamed)
            assert len(a) == len(b) == 5
            for x, y in zip(a, b):
                assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    # epochs differ: the order is seeded by (seed, epoch)
    mem.set_epoch(0)
    first = next(iter(mem))["index"]
    mem.set_epoch(1)
    assert not torch.equal(first, next(iter(mem))["index"])


class NoisySource(SampleSource):
    """A per-sample augmentation that runs in the workers: noise from the sample's generator."""

    def __init__(self, n=20):
        self.x = torch.zeros(n, 3)

    def __len__(self):
        return len(self.x)

    def read(self, i):
        return {"x": self.x[i].clone(), "y": torch.tensor(i % 2)}

    @staticmethod
    def augment(sample, gen):
        return {**sample, "x": sample["x"] + torch.randn(3, generator=gen)}


def test_per_sample_augmentation_is_seeded_by_seed_epoch_and_sample_whatever_the_workers():
    split = StreamSplit(NoisySource())
    batches = {}
    for workers in (0, 2):
        ld = make_loader(split, 6, workers=workers, augment_samples=True, shuffle=True, seed=3)
        for epoch in (0, 1):
            ld.set_epoch(epoch)
            batches[workers, epoch] = torch.cat([b["x"] for b in ld]), torch.cat([b["index"] for b in ld])
    assert torch.equal(batches[0, 0][0], batches[2, 0][0]) and torch.equal(batches[0, 1][0], batches[2, 1][0])
    x0, i0 = batches[0, 0]
    x1, i1 = batches[0, 1]
    # sample j's noise in epoch e is the generator (seed 3, e, j)'s: another epoch, another draw
    assert not torch.equal(x0[i0.argsort()], x1[i1.argsort()])
    from kdlab.seeding import derive, generator
    j = int(i0[0])
    assert torch.equal(x0[0], torch.randn(3, generator=generator(derive(3, 0, 4, j))))
    # evaluation (augment_samples off) reads the plain samples
    plain = make_loader(split, 6, workers=0)
    assert all(bool((b["x"] == 0).all()) for b in plain)


# ------------------------------------------------------------ end to end
def test_streamed_and_in_memory_runs_give_the_same_metrics(tmp_path, monkeypatch):
    """Teacher and student (KD) on digits, in memory and streamed (read in the main process:
    worker processes are covered above and by the image folder test)."""
    seen = _spy(monkeypatch)
    cfg = {**TINY, "train": {**TINY["train"], "epochs": 2}}
    mem, _ = _run(tmp_path, {**cfg, "data": {**TINY["data"], "stream": False}}, "mem")
    assert seen["batches"] == 0
    streamed, _ = _run(tmp_path, {**cfg, "data": {**TINY["data"], "stream": True, "workers": 0}}, "stream")
    assert seen["batches"] >= 2 * 2 * 20  # 20 training batches an epoch, teacher and student, plus evaluation
    assert mem == streamed and len(mem["student"]) == 2


def _images(root: Path, n=12, size=10):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            arr[..., 0] = 200 if c == "cat" else 30  # a learnable class signal
            Image.fromarray(arr).save(root / c / f"{i}.png")


def test_imagefolder_streamed_decodes_in_the_workers_with_the_same_splits_and_metrics(tmp_path, monkeypatch):
    _images(tmp_path / "imgs")
    from kdlab.data import imagefolder

    decoded = []
    original = imagefolder.load_image
    monkeypatch.setattr(imagefolder, "load_image", lambda f, s: decoded.append(f) or original(f, s))
    spec = {"name": "imagefolder", "params": {"path": str(tmp_path / "imgs"), "image_size": 8,
                                              "normalization": "imagenet"}, "stream": True, "workers": 0}
    streamed = load_data(DataSpec(**spec))
    assert isinstance(streamed.train, StreamSplit) and decoded == []  # nothing decoded up front
    in_memory = load_data(DataSpec(**{**spec, "stream": False}))
    for name in ("train", "val", "test"):
        a, b = materialize(getattr(streamed, name)), getattr(in_memory, name)
        assert all(torch.equal(a[k], b[k]) for k in ("x", "y"))
    # auto: in memory under the budget, streamed above it
    assert isinstance(load_data(DataSpec(**{**spec, "stream": "auto"})).train, Split)
    assert isinstance(load_data(DataSpec(**{**spec, "stream": "auto", "memory_budget": 1e-6})).train, StreamSplit)
    # a CNN with crop+flip augmentation and train-split normalisation: the same run either way
    run = {"name": "img", "seeds": [0], "device": "cpu", "methods": CE, "student": {"name": "cnn2d", "params": {"channels": [8]}},
           "train": {"epochs": 2, "optimizer": {"name": "adam", "lr": 0.01, "weight_decay": 0.0}}}
    data = {"name": "imagefolder", "params": {"path": str(tmp_path / "imgs"), "image_size": 8}, "batch_size": 8}
    mem, _ = _run(tmp_path, {**run, "data": {**data, "stream": False}}, "img-mem")
    streamed_run, _ = _run(tmp_path, {**run, "data": {**data, "stream": True, "workers": 1}}, "img-stream")
    assert mem == streamed_run


def test_streamed_run_killed_mid_epoch_resumes_to_the_metrics_of_an_uninterrupted_run(tmp_path):
    cfg = {**TINY, "methods": CE, "student": {"name": "mlp", "params": {"hidden": [128, 128]}},
           "data": {**TINY["data"], "stream": True, "workers": 1},
           "train": {"epochs": 5, "optimizer": {"name": "adam", "lr": 0.001, "weight_decay": 0.0}}}
    path, store = write_config(tmp_path, cfg, name="kill.yaml"), str(tmp_path / "killed")
    proc = subprocess.Popen([sys.executable, "-m", "kdlab", "run", path, "--store", store, "--quiet"], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def logged():
        try:
            rows = RunStore(store).rows() if Path(store, "index.sqlite").exists() else []
            return len(history(rows[0]["path"])) if rows else 0
        except Exception:  # the index or the metrics file is being written
            return 0

    t0 = time.time()
    while logged() < 2:
        assert time.time() - t0 < 120 and proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.01)
    time.sleep(0.05)  # into the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # its loader workers end with it (they share the run's lock, so the run reads as interrupted)
    t0 = time.time()
    while RunStore(store).rows()[0]["status"] != "interrupted":
        assert time.time() - t0 < 30, "the killed run's workers outlived it"
        time.sleep(0.01)
    (row,) = RunStore(store).rows()
    assert 2 <= len(history(row["path"])) < 5
    assert cli("run", path, "--store", store, "--quiet", "--resume") == 0
    resumed = history(RunStore(store).rows()[0]["path"], timeless=True)
    # the reference is uninterrupted and in memory: the same metrics, epoch by epoch
    ref, _ = _run(tmp_path, {**cfg, "data": {**TINY["data"], "stream": False}}, "ref")
    assert resumed == ref["student"] and len(resumed) == 5


# ------------------------------------------------------------- tables and text
SENTENCES = ["the cat sat on the mat", "a dog ran in the park", "birds fly high in the sky", "the sun is hot today",
             "my cat likes warm milk", "the dog barks at night"]


def _tokenizer(folder: Path, words=None):
    """A word-level tokenizer trained on a few sentences, saved as a Hugging Face folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.train_from_iterator(words or SENTENCES, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]"]))
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """The same labelled text table as parquet, JSON lines, CSV and a save_to_disk folder."""
    import datasets
    import pandas as pd

    d = tmp_path_factory.mktemp("tables")
    frame = pd.DataFrame({"text": SENTENCES * 10, "label": [i % 2 for i in range(60)], "score": np.arange(60.0)})
    frame.to_parquet(d / "t.parquet")
    frame.to_json(d / "t.jsonl", orient="records", lines=True)
    frame.to_csv(d / "t.csv", index=False)
    datasets.Dataset.from_pandas(frame).save_to_disk(str(d / "disk"))
    _tokenizer(d / "tok")
    return d


def _table_spec(d, path, **params):
    return DataSpec(name="hf_dataset", params={"path": str(d / path), "columns": {"x": "text", "y": "label"},
                                               "tokenizer_path": str(d / "tok"), "max_length": 8,
                                               "cache": str(d / "cache"), **params})


def test_tables_in_every_format_give_the_same_tokenised_splits(tables):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tables / "tok"))
    ref = load_data(_table_spec(tables, "t.parquet"))
    assert ref.num_classes == 2 and ref.input_shape == (8,) and len(ref.train) + len(ref.val) + len(ref.test) == 60
    assert ref.meta["hf_tokenizer"]["size"] == len(tok) and ref.model_args == {"vocab_size": len(tok)}
    for path in ("t.jsonl", "t.csv", "disk"):
        other = load_data(_table_spec(tables, path))
        for name in ("train", "val", "test"):
            a, b = getattr(ref, name), getattr(other, name)
            assert a.tensors.keys() == b.tensors.keys() == {"x", "y", "attention_mask"}
            assert all(torch.equal(a[k], b[k]) for k in a.tensors)
    # a row is its sentence's ids padded to max_length, mask 1 on tokens, and its label
    x, mask, y = ref.train["x"][0], ref.train["attention_mask"][0], int(ref.train["y"][0])
    text = tok.decode(x[mask.bool()])
    i = SENTENCES.index(text)
    assert torch.equal(x, torch.tensor(tok(SENTENCES[i], padding="max_length", max_length=8)["input_ids"]))
    assert int(mask.sum()) == len(SENTENCES[i].split()) and y == i % 2
    # streamed: the same rows, read on demand
    streamed = load_data(_table_spec(tables, "t.parquet").model_copy(update={"stream": True}))
    assert isinstance(streamed.train, StreamSplit)
    assert all(torch.equal(materialize(streamed.train)[k], ref.train[k]) for k in ref.train.tensors)
    # a numeric column maps to x as numbers
    numeric = load_data(DataSpec(name="hf_dataset", params={"path": str(tables / "t.csv"), "cache": str(tables / "cache"),
                                                            "columns": {"x": "score", "y": "label"}}))
    assert numeric.train["x"].dtype == torch.float32 and numeric.input_shape == ()


def test_tokenised_text_for_language_modelling_ignores_padding(tables):
    data = load_data(DataSpec(name="hf_dataset", params={
        "path": str(tables / "t.jsonl"), "columns": {"x": "text"}, "task": "lm", "tokenizer_path": str(tables / "tok"),
        "max_length": 8, "cache": str(tables / "cache")}))
    x, y, mask = data.train["x"], data.train["y"], data.train["attention_mask"]
    assert data.task == "lm" and x.shape == y.shape == mask.shape
    kept = y != -100
    # the target is the next token; -100 exactly where the next position is padding
    assert torch.equal(y[:, :-1][kept[:, :-1]], x[:, 1:][kept[:, :-1]])
    assert int((~kept).sum()) > 0 and torch.equal(kept[:, :-1], mask[:, 1:].bool())
    # perplexity counts only real targets: a model sure of every next token scores ppl 1
    task = get_task(data)
    batch = {"x": x[:4], "y": y[:4]}
    sure = lambda inp: torch.nn.functional.one_hot(y[:4].clamp_min(0), data.num_classes).float() * 50
    sums = task.eval_batch(sure, batch)
    assert int(sums["n"]) == int(kept[:4].sum()) and task.finalize({k: float(v) for k, v in sums.items()})["acc"] == 100.0


BERT = {"model_type": "bert", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 32, "max_position_embeddings": 16}


def test_text_classifier_streamed_and_in_memory_give_the_same_metrics(tables, tmp_path):
    """A small BERT reads the tokenised text with its attention mask (and has dropout: the
    loader must not draw from the RNG that dropout draws from)."""
    n = len(json.loads(Path(tables / "tok" / "tokenizer.json").read_text())["model"]["vocab"])
    model = lambda h: {"hf": {"config": {**BERT, "hidden_size": h, "vocab_size": n}, "kind": "sequence_classification"}}
    data = {"name": "hf_dataset", "batch_size": 16, "params": _table_spec(tables, "t.jsonl").params}
    cfg = {"name": "text", "seeds": [0], "device": "cpu", "student": model(8), "methods": CE, "train": {"epochs": 1, "optimizer": {"name": "adam", "lr": 0.01,
                                                                                          "weight_decay": 0.0}}}
    mem, _ = _run(tmp_path, {**cfg, "data": {**data, "stream": False}}, "text-mem")
    streamed, _ = _run(tmp_path, {**cfg, "data": {**data, "stream": True, "workers": 0}}, "text-stream")
    assert mem == streamed and set(mem) == {"student"}


# ------------------------------------------------------------------ bad input
def test_bad_streaming_inputs(tables, tmp_path, capsys):
    base = {"name": "bad", "seeds": [0], "device": "cpu", "methods": CE,
            "train": {"epochs": 1, "optimizer": {"name": "adam", "lr": 0.01, "weight_decay": 0.0}}}
    params = _table_spec(tables, "t.parquet").params
    n = len(json.loads(Path(tables / "tok" / "tokenizer.json").read_text())["model"]["vocab"])
    bert = lambda **c: {"hf": {"config": {**BERT, "vocab_size": n, **c}, "kind": "sequence_classification"}}

    missing = {**base, "student": bert(), "data": {"name": "hf_dataset", "params": {**params, "columns": {"x": "txt", "y": "label"}}}}
    assert_clear(*run_bad(capsys, "run", write_config(tmp_path, missing, name="m.yaml")),
                 "data.params.columns.x", "no column 'txt'", "text, label, score")

    # a teacher folder that brings its own (different) tokenizer
    from transformers import AutoConfig, AutoModelForSequenceClassification
    folder = tmp_path / "teacher"
    AutoModelForSequenceClassification.from_config(AutoConfig.for_model(**{**BERT, "vocab_size": n, "num_labels": 2})
                                                   ).save_pretrained(folder)
    _tokenizer(folder, ["completely other words here", "and more of them"])
    data = {"name": "hf_dataset", "params": params}
    other_tok = {**base, "methods": [{"name": "kd"}], "data": data, "student": bert(),
                 "teacher": {"model": {"hf": {"path": str(folder)}}, "checkpoint": str(folder)}}
    assert_clear(*run_bad(capsys, "run", write_config(tmp_path, other_tok, name="t.yaml")),
                 "teacher 0", f"the tokenizer in '{folder}'", str(tables / "tok"), "tokenizers differ")

    # vocabularies of different sizes
    sizes = {**base, "methods": [{"name": "kd"}], "data": data, "student": bert(), "teacher": {"model": bert(vocab_size=n + 5)}}
    assert_clear(*run_bad(capsys, "run", write_config(tmp_path, sizes, name="v.yaml")),
                 f"teacher 0 (hf bert) has a vocabulary of {n + 5} tokens", f"student (hf bert) of {n}")

    # a teacher trained on data tokenised by another tokenizer
    own = {"name": "hf_dataset", "params": {**params, "tokenizer_path": _tokenizer(tmp_path / "tok2", ["x y z"])}}
    theirs = {**sizes, "teacher": {"model": bert(), "data": own}}
    assert_clear(*run_bad(capsys, "run", write_config(tmp_path, theirs, name="o.yaml")),
                 "teacher's data is tokenised by", str(tmp_path / "tok2"), str(tables / "tok"))


# ------------------------------------------------------------------ benchmark
def test_bench_loader_rows_and_bad_worker_counts(capsys):
    from kdlab.bench.loader_throughput import LoaderSetup, run

    rows = run(LoaderSetup(images=40, image=8, classes=2, batch_size=16, workers=[0], student="cnn2d", repeats=1),
               log=lambda *_: None)
    assert [r["loader"] for r in rows] == ["in memory", "streamed, 0 workers"] and rows[0]["epoch_ratio"] == 1.0
    assert all(r["read_samples_s"] > 0 and r["train_samples_s"] > 0 for r in rows)
    assert_clear(*run_bad(capsys, "bench", "loader", "--workers", "0,x"), "--workers", "'0,x'")
