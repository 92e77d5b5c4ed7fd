"""`kdlab export`: the model of a finished run written as safetensors, a Hugging Face folder
or ONNX (checked against onnxruntime on the run's own test data), and measured beside the
teacher it was distilled from: parameters, file size and CPU latency per batch."""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import yaml
from pydantic import ValidationError
from torch import Tensor, nn

from kdlab.config.schema import DataSpec, Experiment, ModelSpec
from kdlab.data.base import DataBundle
from kdlab.errors import KdlabError
from kdlab.models.build import build_model, count_params
from kdlab.models.weights import hf_weight_files, load_model_state, read_checkpoint, save_safetensors
from kdlab.stages.building import load_data
from kdlab.stages.onnx_export import export_onnx, onnx_session, session_logits, torch_logits
from kdlab.stages.teachers import load_teacher, teacher_key
from kdlab.store.runstore import RunStore
from kdlab.tasks.base import get_task

FORMATS = ("safetensors", "hf", "onnx")
WEIGHTS = {"best": "best-validation weights", "last": "last-epoch weights"}


@dataclass
class Measured:
    """One model of the comparison table."""

    role: str  # student | teacher | teacher 1 ...
    source: str
    params: int
    file: Optional[Path]  # the exported file, or the teacher's weights
    file_bytes: Optional[int]
    torch_ms: float
    onnxruntime_ms: Optional[float] = None


@dataclass
class ExportReport:
    run_id: str
    kind: str
    fmt: str
    weights: str
    epoch: int
    epochs: int
    written: list[Path]
    batch: int  # samples per timed batch
    repeats: int
    threads: int
    max_abs_diff: Optional[float] = None  # onnxruntime vs torch logits
    checked_samples: list[int] = field(default_factory=list)  # batch sizes compared
    rows: list[Measured] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def export_run(store: RunStore, given: str, fmt: str, out: str | Path, weights: str = "best",
               batch_size: Optional[int] = None, repeats: int = 20) -> ExportReport:
    if fmt not in FORMATS:
        raise KdlabError(f"unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}")
    row = store.resolve(given)
    rid, path = row["id"], Path(row["path"])
    if row["status"] != "done":
        raise KdlabError(f"run {rid} is {row['status']}: it has no finished model to export; "
                         "finish it first (`kdlab run CONFIG --resume`)")
    ckpt = path / "checkpoints" / f"{weights}.pt"
    if not ckpt.is_file():
        raise KdlabError(f"run {rid} has no checkpoints/{weights}.pt (deleted?); "
                         + ("try --weights last" if weights == "best" else "nothing to export"))
    state = read_checkpoint(ckpt)
    source = (state.get("arch") or {}).get("source")
    if source is None:
        raise KdlabError(f"run {rid} trained a module given from Python (kdlab.api), which kdlab cannot rebuild: load "
                         "its model.safetensors into that module and export it from Python")
    spec = ModelSpec(**source)
    if fmt == "hf" and spec.hf is None:
        raise KdlabError(f"--format hf needs a Hugging Face model, but run {rid}'s model is {spec.source}; "
                         "use --format safetensors or onnx")
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise KdlabError(f"--out '{out}' is a file; give a folder to write the export into")
    config = yaml.safe_load((path / "config.yaml").read_text())
    data = load_data(DataSpec(**config["data"]))
    model = build_model(spec, data, row["kind"])
    load_model_state(model, state["model"], ckpt, row["kind"])
    model.eval()
    inputs = sample_batch(data, batch_size or config["data"].get("batch_size", 64))
    report = ExportReport(rid, row["kind"], fmt, weights, int(state.get("epoch", -1)), int(row["summary"].get("epochs", 0)),
                          [], len(inputs["x"]), repeats, torch.get_num_threads())
    out.mkdir(parents=True, exist_ok=True)
    session = None
    if fmt == "safetensors":
        report.written = [out / "model.safetensors", out / "kdlab_model.json"]
        save_safetensors(model, report.written[0])
        report.written[1].write_text(json.dumps({"model": source, "num_classes": spec.num_classes or data.num_classes,
                                                 "input_shape": list(data.input_shape), "run": rid}, indent=2))
    elif fmt == "hf":
        model.save_pretrained(out)
        report.written = [out]
    else:
        session = _export_checked(model, inputs, out / "model.onnx", report)
    student_file = report.written[0]
    report.rows.append(measure(report.kind, spec.source, model, inputs, student_file, repeats, session))
    report.rows += _teachers(store, config, data, inputs, repeats, report.notes)
    return report


def sample_batch(data: DataBundle, size: int) -> dict[str, Tensor]:
    """The first `size` test samples as the model sees them (after the data's `prepare`); read
    sample by sample when the run's data is streamed (only these samples are decoded)."""
    head = data.test.head(min(size, len(data.test)))
    x = head["x"]
    inputs = {"x": data.prepare(x) if data.prepare is not None else x}
    if "attention_mask" in head:
        inputs["attention_mask"] = head["attention_mask"]
    return inputs


def _export_checked(model: nn.Module, inputs: dict[str, Tensor], file: Path, report: ExportReport):
    """Export, then compare onnxruntime's logits with torch's on the test batch and on a
    smaller one (the batch axis is dynamic)."""
    if len(inputs["x"]) < 2:
        raise KdlabError("the ONNX export is traced on a batch of at least 2 test samples; give --batch-size 2 or more")
    export_onnx(model, inputs, file)
    report.written = [file] + ([Path(f"{file}.data")] if Path(f"{file}.data").exists() else [])
    session = onnx_session(file, torch.get_num_threads())
    diffs = []
    for n in sorted({len(inputs["x"]), max(1, len(inputs["x"]) // 3)}, reverse=True):
        part = {k: v[:n] for k, v in inputs.items()}
        diffs.append(float((session_logits(session, part) - torch_logits(model, part)).abs().max()))
        report.checked_samples.append(n)
    report.max_abs_diff = max(diffs)
    return session


def _median_ms(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def measure(role: str, source: str, model: nn.Module, inputs: dict[str, Tensor], file: Optional[Path], repeats: int,
            session=None) -> Measured:
    size = None
    if file is not None and file.exists():
        size = sum(f.stat().st_size for f in ([file] if file.is_file() else hf_weight_files(file)))
    m = Measured(role, source, count_params(model), file, size, _median_ms(lambda: torch_logits(model, inputs), repeats))
    if session is not None:
        m.onnxruntime_ms = _median_ms(lambda: session_logits(session, inputs), repeats)
    return m


def _teachers(store: RunStore, config: dict, data: DataBundle, inputs: dict[str, Tensor], repeats: int,
              notes: list[str]) -> list[Measured]:
    """The teachers a student run was distilled from, loaded as the run loaded them (a given
    checkpoint, or the stored teacher run with the same key); none for a teacher run."""
    if not (config.get("teacher") or config.get("teachers")):
        return []
    try:
        exp = Experiment(**{k: v for k, v in config.items() if k in Experiment.model_fields})
    except (ValidationError, KdlabError) as e:
        notes.append(f"teacher not measured: the run's config no longer validates ({str(e).splitlines()[0][:120]})")
        return []
    task = get_task(data)
    rows = []
    for i, spec in enumerate(exp.all_teachers()):
        role = "teacher" if len(exp.all_teachers()) == 1 else f"teacher {i}"
        if spec.checkpoint:
            weights = file = Path(spec.checkpoint)
        else:
            found = store.find_done(teacher_key(spec, exp, task))
            if found is None:
                notes.append(f"{role} not measured: its stored run is gone")
                continue
            weights, file = found.ckpt("best"), found.path / "model.safetensors"
        teacher = load_teacher(spec, data, str(weights), role)
        rows.append(measure(role, spec.model.source, teacher, inputs, file if file.exists() else Path(weights), repeats))
    return rows
