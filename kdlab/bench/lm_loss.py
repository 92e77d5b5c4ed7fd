"""Chunked against naive token-level divergence: peak memory and time of forward + backward on
random (batch, tokens, vocabulary) logits, one fresh subprocess per (divergence, mode) so each
memory peak is its own.

  * naive: `divergence_loss(..., chunk_tokens=None)`, plain autograd on all tokens at once;
  * chunked: the same loss `chunk_tokens` tokens at a time (default: the methods' automatic
    chunk, 2^20 logits).
  * time: median of `repeats` forward + backward passes after one warm-up pass;
  * memory on CPU: the resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs
    once the logits exist) minus the resident set at that point: what the loss and its backward
    allocate, the logits' gradient included. On CUDA: torch.cuda.max_memory_allocated over the
    same window minus the allocation before it.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch

from kdlab.bench.peak_memory import run_case, start_window, window_peak
from kdlab.errors import KdlabError

DIVERGENCES = ["fkl", "rkl", "jsd", "skew_fkl", "skew_rkl", "tvd", "akl"]


@dataclass
class LossBenchSetup:
    batch: int = 4
    tokens: int = 512
    vocab: int = 32000
    chunk_tokens: Optional[int] = None  # None: the methods' automatic chunk
    repeats: int = 3
    device: str = "cpu"
    divergences: list[str] = field(default_factory=lambda: list(DIVERGENCES))


def check_divergences(names: list[str]) -> None:
    unknown = [d for d in names if d not in DIVERGENCES]
    if unknown:
        raise KdlabError(f"unknown divergence(s) {', '.join(unknown)}; known: {', '.join(DIVERGENCES)}")


def per_token_of(name: str, vocab: int):
    """The per-token function of registered method `name` at its default parameters."""
    from kdlab.methods.base import MethodContext
    from kdlab.methods.lm_distill import TokenDivergence
    from kdlab.registry import METHODS

    cls = METHODS.get(name).obj
    if not issubclass(cls, TokenDivergence):
        raise KdlabError(f"'{name}' is not a token-level divergence; known: {', '.join(DIVERGENCES)}")
    ctx = MethodContext(num_classes=vocab, student=None, teachers=[], train_size=0, epochs=1, device=torch.device("cpu"))
    return cls(cls.Params(), ctx).per_token()


def resolved_chunk(s: LossBenchSetup) -> int:
    from kdlab.methods.token_divergences import auto_chunk_tokens

    return s.chunk_tokens or auto_chunk_tokens(s.vocab)


def measure_one(s: LossBenchSetup, name: str, mode: str) -> dict:
    """Forward + backward of one divergence in this process: median time and memory peak."""
    from kdlab.methods.token_divergences import divergence_loss

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    device = torch.device(s.device)
    per_token = per_token_of(name, s.vocab)
    chunk = None if mode == "naive" else resolved_chunk(s)
    g = torch.Generator().manual_seed(0)
    student = torch.randn(s.batch, s.tokens, s.vocab, generator=g).mul_(2).to(device).requires_grad_()
    teacher = torch.randn(s.batch, s.tokens, s.vocab, generator=g).mul_(2).to(device)
    mask = torch.ones(s.batch, s.tokens, dtype=torch.bool, device=device)
    # Page in the kernels' code (it counts in the resident set) on a tiny problem first.
    tiny = torch.randn(2, 8, 64, device=device, requires_grad=True)
    for c in (None, 4):
        divergence_loss(tiny, tiny.detach() * 2, mask[:2, :8], per_token, 1.0, c).backward()

    def step() -> float:
        sync()
        t0 = time.perf_counter()
        divergence_loss(student, teacher, mask, per_token, 1.0, chunk).backward()
        sync()
        student.grad = None
        return time.perf_counter() - t0

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    base = start_window(device)
    step()  # warm-up (allocator, lazy init); its peak counts, it is the same work
    times = [step() for _ in range(s.repeats)]
    peak = window_peak(device)
    return {"divergence": name, "mode": mode, "step_s": statistics.median(times), "extra_bytes": peak - base}


def _child(s: LossBenchSetup, name: str, mode: str) -> dict:
    return run_case("kdlab.bench.lm_loss", [json.dumps(asdict(s)), name, mode], f"'{name}' ({mode})")


def run(s: LossBenchSetup | None = None, log=print) -> list[dict]:
    """Rows per divergence: naive and chunked time and memory, and chunked ÷ naive."""
    s = s or LossBenchSetup()
    check_divergences(s.divergences)
    rows = []
    for name in s.divergences:
        naive, chunked = _child(s, name, "naive"), _child(s, name, "chunked")
        for r in (naive, chunked):
            log(f"  {name} {r['mode']}: {r['step_s'] * 1e3:.0f} ms, extra {r['extra_bytes'] / 2**20:.0f} MiB")
        rows.append({"divergence": name, "naive_s": naive["step_s"], "chunked_s": chunked["step_s"],
                     "naive_bytes": naive["extra_bytes"], "chunked_bytes": chunked["extra_bytes"],
                     "time_ratio": chunked["step_s"] / naive["step_s"],
                     "memory_ratio": chunked["extra_bytes"] / max(naive["extra_bytes"], 1)})
    return rows


if __name__ == "__main__":  # the per-case subprocess: python -m kdlab.bench.lm_loss '<setup json>' NAME MODE
    setup = LossBenchSetup(**json.loads(sys.argv[1]))
    print(json.dumps(measure_one(setup, sys.argv[2], sys.argv[3])))
