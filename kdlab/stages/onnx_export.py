"""A model as an ONNX graph that other runtimes read: exported with torch.onnx (the
torch.export-based exporter, which needs onnxscript), logits as its one output, a dynamic
batch axis; and run by onnxruntime, to check it against torch and to time it.
onnx, onnxscript and onnxruntime are optional (`pip install 'kdlab[export]'`)."""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

from kdlab.errors import KdlabError
from kdlab.knowledge.adapters import call_model, logits_of

OPSET = 18


class LogitsOf(nn.Module):
    """`model` taking its inputs positionally and returning only its logits, whatever it
    returns (a Hugging Face ModelOutput, a dict, a tuple)."""

    def __init__(self, model: nn.Module, with_mask: bool):
        super().__init__()
        self.model, self.with_mask = model, with_mask

    def forward(self, x: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        return logits_of(call_model(self.model, x, attention_mask if self.with_mask else None), self.model)


def input_names(inputs: dict[str, Tensor]) -> list[str]:
    return ["x", "attention_mask"] if "attention_mask" in inputs else ["x"]


def _need(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise KdlabError(f"ONNX export needs {module}: pip install 'kdlab[export]'") from None


@contextlib.contextmanager
def _quiet():
    """The exporter's progress lines and warnings (torchvision ops it skips, deprecations)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [l.level for l in loggers]
    for l in loggers:
        l.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(None):
            warnings.simplefilter("ignore")
            yield
    finally:
        for l, level in zip(loggers, levels):
            l.setLevel(level)


def export_onnx(model: nn.Module, inputs: dict[str, Tensor], path: str | Path) -> None:
    """Write `model` (in eval mode, on the CPU) as `path`: inputs `x` (and `attention_mask`),
    output `logits`, batch axis dynamic. `inputs` is an example batch of at least 2 samples."""
    _need("onnx"), _need("onnxscript")
    names = input_names(inputs)
    wrapped = LogitsOf(model, "attention_mask" in inputs).eval()
    args = tuple(inputs[n] for n in names)
    batch = torch.export.Dim("batch")
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(wrapped, args, input_names=names, output_names=["logits"], opset_version=OPSET,
                                        dynamic_shapes=tuple({0: batch} for _ in names), dynamo=True, verbose=False)
            program.save(str(path))
    except Exception as e:  # a model torch.export cannot trace (data-dependent control flow, ...)
        text = str(e).strip().splitlines()
        raise KdlabError(f"torch.onnx could not export {type(model).__name__}: "
                         f"{text[0][:300] if text else type(e).__name__}") from None
    finally:
        model.eval()  # the exporter restores the wrapper's mode, which reaches the model


def onnx_session(path: str | Path, threads: int):
    ort = _need("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def session_logits(session, inputs: dict[str, Tensor]) -> Tensor:
    feed = {n: inputs[n].cpu().numpy() for n in input_names(inputs)}
    return torch.from_numpy(session.run(["logits"], feed)[0])


def torch_logits(model: nn.Module, inputs: dict[str, Tensor]) -> Tensor:
    with torch.inference_mode():
        return logits_of(call_model(model, inputs["x"], inputs.get("attention_mask")), model).float()
