"""What the memory benchmarks share: a peak-memory window (CPU: the process's resident-set
high-water mark; CUDA: torch's allocator peak) and one fresh subprocess per measured case, so
each peak is that case's own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from kdlab.errors import KdlabError


def rss_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KdlabError(f"/proc/self/status has no {key}; the CPU memory measurement needs Linux")


def start_window(device: torch.device) -> int:
    """Reset the peak to what is held now, and return that (bytes)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    base = rss_kb("VmRSS") * 1024
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    return base


def window_peak(device: torch.device) -> int:
    """The peak (bytes) since `start_window`."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    return rss_kb("VmHWM") * 1024


def run_case(module: str, args: list[str], what: str) -> dict:
    """`python -m MODULE ARGS...` in a fresh process; its last stdout line is the JSON result."""
    cmd = [sys.executable, "-m", module, *args]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise KdlabError(f"{what} failed in the benchmark:\n{out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
