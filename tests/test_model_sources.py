"""Models from outside kdlab's zoo: Hugging Face folders and configs (BERT classifier, GPT-2
language model, ViT image classifier), any nn.Module from an import path, initial weights, the
student saved as model.safetensors and a Hugging Face folder, and each way these go wrong."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForImageClassification,
                          AutoModelForSequenceClassification)

from helpers import assert_clear, cli, run_bad, write_config
from kdlab.config.schema import DataSpec, ModelSpec
from kdlab.engine.evaluation import evaluate
from kdlab.models.build import build_model
from kdlab.stages.building import load_data
from kdlab.store.runstore import RunStore
from kdlab.tasks.base import get_task

TINY_BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=30,
                 max_position_embeddings=16)
SMALL_BERT = {"model_type": "bert", **TINY_BERT, "hidden_size": 16, "num_hidden_layers": 1, "intermediate_size": 32}
TINY_VIT = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=8,
                patch_size=4, num_channels=1)
TINY_GPT2 = dict(n_embd=16, n_layer=1, n_head=2, n_positions=16, bos_token_id=0, eos_token_id=0)
ADAM = {"epochs": 2, "optimizer": {"name": "adam", "lr": 0.002, "weight_decay": 0.0}}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Tiny randomly initialised Hugging Face models saved with save_pretrained, and their data."""
    d = tmp_path_factory.mktemp("hf")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 30, size=(120, 8))
    np.savez(d / "tokens.npz", x=x, y=x[:, 0] % 3)  # the label is the first token's residue
    words = [f"w{i}" for i in range(12)]
    (d / "text.txt").write_text(" ".join(words[(i * 7 + i // 5) % 12] for i in range(900)))
    vocab = load_data(DataSpec(name="text", params={"path": str(d / "text.txt"), "seq_len": 8})).num_classes
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(AutoConfig.for_model("bert", **TINY_BERT, num_labels=3)
                                                   ).save_pretrained(d / "bert")
    AutoModelForCausalLM.from_config(AutoConfig.for_model("gpt2", **TINY_GPT2, vocab_size=vocab)).save_pretrained(d / "gpt2")
    AutoModelForImageClassification.from_config(AutoConfig.for_model("vit", **TINY_VIT, num_labels=10)
                                                ).save_pretrained(d / "vit")
    (d / "mynets.py").write_text(MYNETS)
    return d


MYNETS = '''
import torch
from torch import nn

class DictNet(nn.Module):
    """Returns a dict: the logits are found under 'logits'."""
    def __init__(self, num_classes, input_shape, width=8):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(input_shape[0], width), nn.ReLU())
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        h = self.body(x)
        return {"hidden": h, "logits": self.head(h)}

def not_a_model():
    return 42
'''

TOKENS = {"name": "npz", "params": {"path": "tokens.npz", "tokens": True}, "batch_size": 32}
DIGITS = {"name": "digits", "batch_size": 64, "train_fraction": 0.3}


def _config(d: Path, **sections) -> str:
    return write_config(d, {"name": "src", "seeds": [0], "device": "cpu", "train": ADAM, **sections},
                        name=f"exp{len(list(d.glob('exp*.yaml')))}.yaml")


def _runs(store):
    return {r["kind"]: r for r in RunStore(store).rows()}


def _eval(model, data):
    return evaluate(model.eval(), data.test, get_task(data), data.prepare, 1024)


def _printed_teacher_score(out: str, metric: str) -> float:
    return float(re.search(rf"teacher 0: [\d,]+ params, test {metric} ([\d.]+)", out).group(1))


def test_bert_folder_teacher_distils_into_a_bert_from_config(files, store, capsys):
    """The folder teacher is used as saved (checkpoint: the same folder); the student is built
    from a config dict, reads the teacher's logits (KD) and hidden states (FitNet on module
    paths), and is saved both as model.safetensors and as a Hugging Face folder."""
    cfg = _config(files, data=TOKENS, teacher={"model": {"hf": {"path": "bert"}}, "checkpoint": "bert"},
                  student={"hf": {"config": SMALL_BERT, "kind": "sequence_classification"}},
                  methods=[{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5},
                           {"name": "fitnet", "student_layers": ["bert.encoder.layer.0"], "teacher_layers": ["bert"]}])
    assert cli("run", cfg, "--store", store, "--quiet") == 0
    out = capsys.readouterr().out
    data = load_data(DataSpec(**TOKENS | {"params": {"path": str(files / "tokens.npz"), "tokens": True}}))
    saved_teacher = AutoModelForSequenceClassification.from_pretrained(files / "bert", local_files_only=True)
    assert _printed_teacher_score(out, "top1") == pytest.approx(_eval(saved_teacher, data)["top1"], abs=0.006)
    run = _runs(store)["student"]
    assert set(_runs(store)) == {"student"}  # the teacher was loaded, not trained
    last = [json.loads(l) for l in Path(run["path"], "metrics.jsonl").read_text().splitlines()][-1]
    assert last["train_kd"] > 0 and last["train_fitnet"] > 0
    # The Hugging Face folder loads with from_pretrained and scores what the run measured.
    student = AutoModelForSequenceClassification.from_pretrained(Path(run["path"]) / "hf", local_files_only=True)
    assert student.config.num_labels == 3 and student.config.hidden_size == 16  # num_labels filled in from the data
    assert _eval(student, data)["top1"] == pytest.approx(run["summary"]["test_top1"])


def test_hf_folder_is_loaded_with_its_weights(files):
    data = load_data(DataSpec(**TOKENS | {"params": {"path": str(files / "tokens.npz"), "tokens": True}}))
    built = build_model(ModelSpec(hf={"path": str(files / "bert")}), data).state_dict()
    saved = AutoModelForSequenceClassification.from_pretrained(files / "bert", local_files_only=True).state_dict()
    assert built.keys() == saved.keys() and all(torch.equal(built[k], saved[k]) for k in saved)


def test_gpt2_language_model_student_round_trips_through_safetensors(files, store):
    """GPT-2 (ModelOutput logits (B, T, V), tied input/output embeddings) as teacher and student
    of next-token prediction; the student's model.safetensors, given as `weights:`, and its
    Hugging Face folder both reproduce the run's test perplexity."""
    text = {"name": "text", "params": {"path": "text.txt", "seq_len": 8}, "batch_size": 16}
    student = {"hf": {"config": {"model_type": "gpt2", **TINY_GPT2, "n_embd": 8}, "kind": "causal_lm"}}
    cfg = _config(files, data=text, teacher={"model": {"hf": {"path": "gpt2"}}, "checkpoint": "gpt2"},
                  student=student, methods=[{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5}])
    assert cli("run", cfg, "--store", store, "--quiet") == 0
    run = _runs(store)["student"]
    data = load_data(DataSpec(**text | {"params": {"path": str(files / "text.txt"), "seq_len": 8}}))
    ppl = run["summary"]["test_ppl"]
    from_hf = AutoModelForCausalLM.from_pretrained(Path(run["path"]) / "hf", local_files_only=True)
    assert from_hf.config.vocab_size == data.num_classes  # the vocabulary filled in from the data
    assert _eval(from_hf, data)["ppl"] == pytest.approx(ppl, rel=1e-6)
    spec = ModelSpec(**student, weights=str(Path(run["path"]) / "model.safetensors"))
    assert _eval(build_model(spec, data), data)["ppl"] == pytest.approx(ppl, rel=1e-6)


def test_vit_teacher_trained_from_its_folder_then_distilled(files, store):
    """A folder teacher without a checkpoint is trained first (and stored with its hf/ folder)."""
    cfg = _config(files, data=DIGITS, teacher={"model": {"hf": {"path": "vit", "kind": "image_classification"}},
                                                "train": {**ADAM, "epochs": 1}},
                  student={"hf": {"config": {"model_type": "vit", **TINY_VIT, "hidden_size": 8},
                                  "kind": "image_classification"}},
                  methods=[{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5}])
    assert cli("run", cfg, "--store", store, "--quiet") == 0
    runs = _runs(store)
    assert set(runs) == {"teacher", "student"}
    data = load_data(DataSpec(**DIGITS))
    for kind, width in (("teacher", 16), ("student", 8)):
        model = AutoModelForImageClassification.from_pretrained(Path(runs[kind]["path"]) / "hf", local_files_only=True)
        assert model.config.hidden_size == width
        assert _eval(model, data)["top1"] == pytest.approx(runs[kind]["summary"]["test_top1"])


def test_import_models_as_teacher_and_student(files, store, monkeypatch):
    """The teacher comes from the user's module (given num_classes and input_shape because it
    names them; its dict output's 'logits' are found); the student is plain torch.nn.Linear."""
    monkeypatch.syspath_prepend(str(files))
    rng = np.random.default_rng(1)
    x = rng.normal(size=(150, 12)).astype(np.float32)
    np.savez(files / "flat.npz", x=x, y=(x[:, 0] > 0).astype(int) + (x[:, 1] > 0).astype(int))
    cfg = _config(files, data={"name": "npz", "params": {"path": "flat.npz"}, "batch_size": 32},
                  teacher={"model": {"import": "mynets:DictNet", "params": {"width": 32}}},
                  student={"import": "torch.nn:Linear", "params": {"in_features": 12, "out_features": 3}},
                  methods=[{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5}])
    assert cli("run", cfg, "--store", store, "--quiet") == 0
    runs = _runs(store)
    assert runs["teacher"]["summary"]["params"] == 12 * 32 + 32 + 32 * 3 + 3
    assert runs["student"]["summary"]["params"] == 12 * 3 + 3
    last = json.loads(Path(runs["student"]["path"], "metrics.jsonl").read_text().splitlines()[-1])
    assert last["train_kd"] > 0


def test_safetensors_round_trip_as_weights_and_as_teacher_checkpoint(files, store, capsys, tmp_path):
    mlp = {"name": "mlp", "params": {"hidden": [16]}}
    cfg = _config(tmp_path, data=DIGITS, student=mlp, methods=[{"name": "ce"}])
    assert cli("run", cfg, "--store", store, "--quiet") == 0
    run = _runs(store)["student"]
    weights = Path(run["path"]) / "model.safetensors"
    data = load_data(DataSpec(**DIGITS))
    again = _eval(build_model(ModelSpec(**mlp, weights=str(weights)), data), data)
    assert again["top1"] == pytest.approx(run["summary"]["test_top1"])
    assert again["loss"] == pytest.approx(run["summary"]["test_loss"], rel=1e-6)
    capsys.readouterr()
    cfg = _config(tmp_path, data=DIGITS, teacher={"model": mlp, "checkpoint": str(weights)},
                  student={"name": "mlp", "params": {"hidden": [8]}}, train={**ADAM, "epochs": 1},
                  methods=[{"name": "kd"}])
    assert cli("run", cfg, "--store", store, "--quiet") == 0
    assert _printed_teacher_score(capsys.readouterr().out, "top1") == pytest.approx(run["summary"]["test_top1"], abs=0.006)


def test_list_layers_of_hf_import_and_config_models(files, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(files))
    assert cli("list", "layers", "--hf", files / "bert") == 0
    assert "bert.encoder.layer.1.attention.self.query  Linear" in capsys.readouterr().out
    assert cli("list", "layers", "--import", "mynets:DictNet", "--params", "{width: 4}", "--input-shape", "12") == 0
    assert capsys.readouterr().out.split() == ["body", "Sequential", "body.0", "Linear", "body.1", "ReLU", "head", "Linear"]
    cfg = _config(files, data=TOKENS, student={"hf": {"config": SMALL_BERT, "kind": "sequence_classification"}})
    assert cli("list", "layers", "--config", cfg) == 0
    out = capsys.readouterr().out
    assert "bert.encoder.layer.0.output.dense  Linear" in out and "bert.encoder.layer.1" not in out


# ------------------------------------------------------------------------------ bad input
def _bad_student(files, student, data=TOKENS, teacher=None):
    return _config(files, data=data, student=student, methods=[{"name": "ce"}], **({"teacher": teacher} if teacher else {}))


@pytest.mark.parametrize("command, student, needles", [
    ("validate", {"hf": {"path": "nowhere"}}, ["student.hf.path", "does not exist"]),
    ("validate", {"hf": {"path": "bert", "kind": "speech"}}, ["student.hf.kind", "sequence_classification"]),
    ("validate", {"hf": {"config": {"hidden_size": 8}}}, ["model_type"]),
    ("validate", {"name": "mlp", "hf": {"path": "bert"}}, ["exactly one source", "name, hf"]),
    ("validate", {"import": "no_such_pkg.nets:build"}, ["cannot import module 'no_such_pkg.nets'"]),
    ("validate", {"import": "mynets:Missing"}, ["module 'mynets' has no attribute 'Missing'"]),
    ("validate", {"import": "mynets.DictNet"}, ["package.module:callable"]),
    ("run", {"import": "mynets:not_a_model"}, ["'mynets:not_a_model' returned an object of type int, not a torch nn.Module"]),
    ("run", {"hf": {"config": {"model_type": "bertt"}}}, ["has no model_type 'bertt'", "Did you mean: bert"]),
    ("run", {"hf": {"path": "bert", "kind": "image_classification"}}, ["no image_classification head for model_type bert"]),
])
def test_bad_model_sources(files, capsys, monkeypatch, command, student, needles):
    monkeypatch.syspath_prepend(str(files))
    cfg = _bad_student(files, student)
    assert_clear(*run_bad(capsys, command, cfg, "--store", files / "bad_store") if command == "run"
                 else run_bad(capsys, command, cfg), *needles)


def test_hf_folder_without_weights(files, capsys):
    empty = files / "config_only"
    empty.mkdir(exist_ok=True)
    (empty / "config.json").write_text((files / "bert" / "config.json").read_text())
    cfg = _bad_student(files, {"hf": {"path": "config_only"}})
    assert_clear(*run_bad(capsys, "run", cfg, "--store", files / "bad_store"), "holds no .safetensors weights")


def test_truncated_safetensors(files, capsys, tmp_path):
    blob = (files / "bert" / "model.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(blob[: len(blob) // 2])
    cfg = _bad_student(files, {"hf": {"path": "bert"}, "weights": str(tmp_path / "cut.safetensors")})
    assert_clear(*run_bad(capsys, "run", cfg, "--store", files / "bad_store"), "cut.safetensors",
                 "not a readable .safetensors file")
    cfg = _bad_student(files, {"hf": {"path": "bert"}}, teacher={"model": {"hf": {"path": "bert"}},
                                                                  "checkpoint": str(tmp_path / "cut.safetensors")})
    cfg_kd = cfg.replace(".yaml", "_kd.yaml")
    Path(cfg_kd).write_text(Path(cfg).read_text().replace("- name: ce", "- name: kd"))
    assert_clear(*run_bad(capsys, "run", cfg_kd, "--store", files / "bad_store"), "not a readable .safetensors file")


def test_class_count_mismatches(files, capsys, monkeypatch):
    """A folder with 3 labels on 10-class data, and an imported net with 4 outputs."""
    monkeypatch.syspath_prepend(str(files))
    cfg = _bad_student(files, {"hf": {"path": "bert"}}, data=DIGITS)
    assert_clear(*run_bad(capsys, "run", cfg, "--store", files / "bad_store"), "predicts 3 labels", "10 classes")
    cfg = _bad_student(files, {"import": "torch.nn:Linear", "params": {"in_features": 8, "out_features": 4}},
                       data={"name": "digits", "batch_size": 64})
    assert_clear(*run_bad(capsys, "run", cfg, "--store", files / "bad_store"), "student (torch.nn:Linear)",
                 "gives 4 logits per sample but the data has 10 classes")


def test_logits_found_in_what_models_return():
    from transformers.modeling_outputs import SequenceClassifierOutput

    from kdlab.errors import KdlabError
    from kdlab.knowledge.adapters import logits_of
    from kdlab.knowledge.instruments import predict_logits

    z = torch.randn(4, 3)
    for out in (z, SequenceClassifierOutput(logits=z), {"hidden": z + 1, "logits": z}, (z, z + 1)):
        assert logits_of(out) is z
    with pytest.raises(KdlabError, match="returned a dict with keys hidden, not logits"):
        logits_of({"hidden": z})

    class DictNet(torch.nn.Module):
        def forward(self, x):
            return {"logits": 2 * x}

    x = torch.randn(5, 3)
    assert torch.equal(predict_logits(DictNet(), x), 2 * x)  # the diagnosis instruments too
