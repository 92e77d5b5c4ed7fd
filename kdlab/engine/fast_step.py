"""A faster training step where the hardware allows it: `train.compile` (torch.compile of the
step's student + methods module), `train.channels_last` (NHWC memory format for convolutional
models and their image inputs) and bf16 autocast on the CPU (`train.amp` with `amp_dtype: bf16`).

Compiling: the trainable module (student and the methods' projectors and losses, what the
optimiser and DDP see) is compiled in place with `nn.Module.compile()` and then wrapped in
DDP, the order PyTorch's guide gives ("Where to apply torch.compile?": compile the inner
module, then wrap it; Dynamo does not trace DDP wrappers well). In place, the module's
state_dict keeps its own names (no `_orig_mod.` prefix): compiled and eager checkpoints are
the same files. The teachers' forward is compiled too, through wrappers (measured: a further
gain; a teacher answered by `teacher.cache` never runs, so never compiles). Evaluation stays
eager: its batch shapes differ from training's and each would compile.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from kdlab.errors import KdlabError


@functools.lru_cache(maxsize=None)
def _probe(device_type: str) -> str:
    """'' if torch.compile builds and runs a kernel on this device type, else why not."""
    try:
        fn = torch.compile(lambda x: (x * 2 + 1).relu(), backend="inductor", dynamic=False)
        x = torch.arange(4.0, device=device_type)
        if not torch.equal(fn(x), (x * 2 + 1).relu()):
            return "the compiled probe gave a wrong result"
    except Exception as e:  # noqa: BLE001 - any failure to build kernels means: not here
        # The first line says what failed (e.g. "InvalidCxxCompiler: No working C++ compiler
        # found ..."); the rest is Dynamo's advice on debugging it.
        lines = [line for line in str(e).strip().splitlines() if line.strip()]
        return lines[0][:200] if lines else type(e).__name__
    return ""


def check_compile(device: torch.device) -> None:
    """Refuse train.compile before anything trains when inductor cannot build kernels here
    (on the CPU it needs a C++ compiler: g++, or the one $CXX names)."""
    why = _probe(device.type)
    if why:
        raise KdlabError(f"train.compile: torch.compile cannot build kernels on {device.type} here ({why}); "
                         "install a C++ compiler (g++, or set CXX) or set train.compile: false")


def compile_in_place(module: nn.Module) -> None:
    """Compile the module's forward in place. dynamic=False: each batch shape (the full batch
    and a smaller last one) gets its own static kernels, so a resumed run runs the very kernels
    an uninterrupted one does at every step, and results agree exactly."""
    module.compile(dynamic=False)


def compiled(teacher: nn.Module) -> nn.Module:
    """A compiled caller of a teacher's forward (a wrapper: the teacher module, shared with
    other stages and read by feature taps, is left as it is). Measured: compiling the teacher
    too took the resnet32 -> resnet8 KD step from 0.79 to 0.65 of eager (docs/benchmarks.md)."""
    return torch.compile(teacher, dynamic=False)


def channels_last(module: nn.Module) -> nn.Module:
    """4-D (convolution) weights in NHWC; other parameters are left as they are."""
    return module.to(memory_format=torch.channels_last)


def is_convolutional(module: nn.Module) -> bool:
    """Whether the module has 2-D convolution weights (4-D tensors): only then do NHWC image
    batches pay; an MLP would flatten them back with a copy (measured: 1.1x its step)."""
    return any(p.dim() == 4 for p in module.parameters())


def channels_last_batch(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """The batch's images (4-D floating x) in NHWC; other inputs are left as they are."""
    x = batch.get("x")
    if isinstance(x, Tensor) and x.dim() == 4 and x.is_floating_point():
        return {**batch, "x": x.contiguous(memory_format=torch.channels_last)}
    return batch


def amp_enabled(amp: bool, amp_dtype: str, device: torch.device) -> tuple[bool, str]:
    """(autocast on, why not when asked for and off): bf16 runs on CUDA and the CPU; fp16
    (with loss scaling) on CUDA only."""
    if not amp:
        return False, ""
    if device.type == "cuda" or amp_dtype == "bf16":
        return True, ""
    return False, "train.amp_dtype fp16 is for CUDA; use amp_dtype: bf16 on the CPU. Running in float32"
