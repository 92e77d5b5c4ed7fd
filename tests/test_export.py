"""`kdlab export`: each format from tiny finished runs (an MLP distilled on digits; the pydoc
text-classification showcase shrunk to tiny BERTs), loaded back as other tools load them,
ONNX checked against onnxruntime, the teacher-vs-student table, and each bad input."""

import json
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from helpers import TINY, assert_clear, checkpoint, cli, run_bad, write_config
from kdlab.config.schema import DataSpec, ModelSpec
from kdlab.models.build import build_model
from kdlab.stages.onnx_export import onnx_session, session_logits, torch_logits
from kdlab.stages.building import load_data
from kdlab.stages.export import sample_batch
from kdlab.store.runstore import RunStore

SHOWCASE = Path(__file__).parents[1] / "configs" / "examples" / "text_classification_pydoc.yaml"
DIGITS = {"name": "digits", "batch_size": 64, "train_fraction": 0.3}
MLP_STUDENT, MLP_TEACHER = 64 * 16 + 16 + 16 * 10 + 10, 64 * 64 + 64 + 64 * 10 + 10


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    """A teacher (trained first) and a student distilled from it on digits, 2 epochs."""
    d = tmp_path_factory.mktemp("mlp")
    cfg = write_config(d, {**TINY, "data": DIGITS, "train": {**TINY["train"], "epochs": 2}})
    assert cli("run", cfg, "--store", d / "store", "--quiet") == 0
    rows = {r["kind"]: r for r in RunStore(d / "store").rows()}
    return d, rows["student"], rows["teacher"]


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory):
    """The showcase config shrunk: few paragraphs, one epoch, one seed, tiny BERTs."""
    d = tmp_path_factory.mktemp("bert")
    tiny = "hidden_size=16,num_hidden_layers=1,num_attention_heads=2,intermediate_size=32,max_position_embeddings=16"
    over = ["seeds=[0]", "train.epochs=1", "data.params.seq_len=16", "data.params.max_per_class=12",
            "data.params.max_vocab=300", "data.eval_batch_size=64",
            *(f"{role}.hf.config.{kv}" for role in ("teacher.model", "student") for kv in tiny.split(",")),
            "student.hf.config.hidden_size=8", "student.hf.config.intermediate_size=16"]
    assert cli("run", SHOWCASE, "--store", d / "store", "--quiet", *over) == 0
    rows = RunStore(d / "store").rows()
    assert sorted((r["kind"], r["variant"] or "") for r in rows) == [("student", "ce"), ("student", "kd"), ("teacher", "")]
    return d, next(r for r in rows if r["variant"] == "kd")


def _export(capsys, d, run, *args) -> str:
    assert cli("export", run["id"], "--store", d / "store", "--repeats", "2", *args) == 0
    return " ".join(capsys.readouterr().out.split())  # the console wraps long lines


def _stored_model(run, which="best"):
    """The run's model rebuilt from its checkpoint, independently of the export code."""
    ck = checkpoint(run["path"], which)
    data = load_data(DataSpec(**_config(run)["data"]))
    model = build_model(ModelSpec(**ck["arch"]["source"]), data)
    model.load_state_dict(ck["model"])
    return model.eval(), data, ck


def _config(run):
    import yaml

    return yaml.safe_load(Path(run["path"], "config.yaml").read_text())


def _row(out: str, role: str) -> list[str]:
    """The cells after the model's name in its table row (source, params, size, latencies)."""
    return re.search(rf"│ {role} │ (.*?) │ (?=[│└])", out).group(1).split(" │ ")


def test_safetensors_export_gives_identical_logits_and_the_table(mlp_run, capsys, tmp_path):
    d, student, teacher = mlp_run
    out = _export(capsys, d, student, "--format", "safetensors", "--out", tmp_path / "st")
    model, data, ck = _stored_model(student)
    assert f"exported the student of {student['id']} (best-validation weights, epoch {ck['epoch'] + 1} of 2)" in out
    back = build_model(ModelSpec(name="mlp", params={"hidden": [16]}, weights=str(tmp_path / "st" / "model.safetensors")),
                       data).eval()
    x = sample_batch(data, 64)
    assert torch.equal(torch_logits(back, x), torch_logits(model, x))
    assert json.loads((tmp_path / "st" / "kdlab_model.json").read_text())["model"]["name"] == "mlp"
    # The table: the student and the teacher it was distilled from, with their parameters and files.
    s_row, t_row = _row(out, "student"), _row(out, "teacher")
    assert s_row[:2] == ["mlp", f"{MLP_STUDENT:,}"] and t_row[:2] == ["mlp", f"{MLP_TEACHER:,}"]
    size = (tmp_path / "st" / "model.safetensors").stat().st_size
    assert s_row[2] == f"{size / 1e3:.1f} kB"
    assert t_row[2] == f"{Path(teacher['path'], 'model.safetensors').stat().st_size / 1e3:.1f} kB"
    assert "median of 2 runs on a batch of 64 test samples" in out


def test_last_epoch_weights_on_request(mlp_run, capsys, tmp_path):
    d, student, _ = mlp_run
    out = _export(capsys, d, student, "--format", "safetensors", "--out", tmp_path / "last", "--weights", "last")
    assert "(last-epoch weights, epoch 2 of 2)" in out
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "last" / "model.safetensors")
    last = checkpoint(student["path"], "last")["model"]
    assert saved.keys() == last.keys() and all(torch.equal(saved[k], last[k]) for k in last)


def test_onnx_export_matches_torch_under_onnxruntime(mlp_run, capsys, tmp_path):
    d, student, _ = mlp_run
    out = _export(capsys, d, student, "--format", "onnx", "--out", tmp_path / "onnx", "--batch-size", "30")
    diff = float(re.search(r"largest absolute logit difference ([\d.e+-]+)", out).group(1))
    assert diff < 1e-4 and "batches of 30 and 10" in out
    model, data, _ = _stored_model(student)
    session = onnx_session(tmp_path / "onnx" / "model.onnx", 1)
    for n in (7, 64):  # batch sizes the graph was not traced with: the batch axis is dynamic
        x = sample_batch(data, n)
        assert (session_logits(session, x) - torch_logits(model, x)).abs().max() < 1e-4
    assert len(_row(out, "student")) == 5 and _row(out, "teacher")[4] == "–"  # onnxruntime: the exported student


def test_a_run_on_streamed_data_exports_checked_on_its_test_samples(capsys, tmp_path):
    """Data read sample by sample (data.stream: true): the export reads only the test samples it
    checks and times, the same samples the in-memory path would give."""
    from kdlab.data.stream import StreamSplit

    cfg = {**TINY, "data": {**DIGITS, "stream": True, "workers": 0}, "train": {**TINY["train"], "epochs": 1}}
    assert cli("run", write_config(tmp_path, cfg), "--store", tmp_path / "store", "--quiet") == 0
    student = next(r for r in RunStore(tmp_path / "store").rows() if r["kind"] == "student")
    out = _export(capsys, tmp_path, student, "--format", "onnx", "--out", tmp_path / "onnx", "--batch-size", "16")
    assert float(re.search(r"largest absolute logit difference ([\d.e+-]+)", out).group(1)) < 1e-4
    assert "batches of 16 and 5" in out and len(_row(out, "teacher")) == 5
    model, streamed, _ = _stored_model(student)
    assert isinstance(streamed.test, StreamSplit)
    in_memory = load_data(DataSpec(**{**_config(student)["data"], "stream": False}))
    x = sample_batch(in_memory, 16)
    assert all(torch.equal(x[k], v) for k, v in sample_batch(streamed, 16).items())
    session = onnx_session(tmp_path / "onnx" / "model.onnx", 1)
    assert (session_logits(session, x) - torch_logits(model, x)).abs().max() < 1e-4


def test_showcase_runs_and_its_bert_student_exports_as_hf_and_onnx(bert_run, capsys, tmp_path):
    """The showcase config end to end (tiny): the BERT student exports as a Hugging Face folder
    that from_pretrained loads (same logits), and as ONNX with an attention mask input."""
    d, student = bert_run
    model, data, _ = _stored_model(student)
    x = sample_batch(data, 64)
    out = _export(capsys, d, student, "--format", "hf", "--out", tmp_path / "hf")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    assert torch.equal(torch_logits(loaded, x), torch_logits(model, x))
    assert loaded.config.vocab_size == data.model_args["vocab_size"] <= 300  # the config left it to the data
    t_params = int(_row(out, "teacher")[1].replace(",", ""))
    s_params = int(_row(out, "student")[1].replace(",", ""))
    assert s_params == sum(p.numel() for p in model.parameters()) and t_params > s_params
    out = _export(capsys, d, student, "--format", "onnx", "--out", tmp_path / "onnx")
    assert float(re.search(r"largest absolute logit difference ([\d.e+-]+)", out).group(1)) < 1e-4
    session = onnx_session(tmp_path / "onnx" / "model.onnx", 1)
    assert [i.name for i in session.get_inputs()] == ["x", "attention_mask"]
    half = {k: v[:5] for k, v in x.items()}
    assert (session_logits(session, half) - torch_logits(model, half)).abs().max() < 1e-4


# ------------------------------------------------------------------------------ bad input
def test_unknown_run_and_a_run_with_no_finished_student(mlp_run, capsys, tmp_path):
    d, student, _ = mlp_run
    assert_clear(*run_bad(capsys, "export", "no-such-run", "--format", "onnx", "--out", tmp_path, "--store", d / "store"),
                 "no run 'no-such-run'")
    cfg = write_config(tmp_path, {**TINY, "data": DIGITS, "teacher": None, "methods": [{"name": "ce"}]}, name="stop.yaml")
    assert cli("run", cfg, "--store", tmp_path / "store", "--quiet", "--stop-after-epoch", "1") == 0
    rid = RunStore(tmp_path / "store").rows()[0]["id"]
    assert_clear(*run_bad(capsys, "export", rid, "--format", "safetensors", "--out", tmp_path / "o",
                          "--store", tmp_path / "store"), f"run {rid} is interrupted", "no finished model", "--resume")
    assert not (tmp_path / "o").exists()


def test_hf_format_of_a_zoo_model_and_an_unknown_format(mlp_run, capsys, tmp_path):
    d, student, _ = mlp_run
    assert_clear(*run_bad(capsys, "export", student["id"], "--format", "hf", "--out", tmp_path / "o", "--store", d / "store"),
                 "--format hf needs a Hugging Face model", "is mlp", "safetensors or onnx")
    assert not (tmp_path / "o").exists()
    code, lines, err = run_bad(capsys, "export", student["id"], "--format", "tflite", "--out", tmp_path, "--store", d / "store")
    assert code == 2 and "invalid choice: 'tflite'" in err and len(lines) == 2
