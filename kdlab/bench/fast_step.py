"""The faster step's settings against eager float32 on the same KD step (`kdlab bench step
--fast`): train.compile, train.channels_last, bf16 autocast (train.amp) and all three.

Each setting gets one trainer, built and warmed up once (a pass over the batches: compiling
happens there, not in the timed rounds). A round runs step 1 of every setting, then step 2
of every setting, ... (who goes first rotates), and each setting's ratio is the median of its
per-round ratios to the eager steps of the same round: load that drifts on a shared machine
falls on all settings alike. The step timed is the engine's own (`Trainer.step`: teacher
forward, student + methods forward, backward, optimiser), evaluation excluded.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from kdlab.bench.step_overhead import BenchSetup, _data, _models
from kdlab.config.schema import MethodSpec, OptimizerSpec, ScheduleSpec, TrainSpec
from kdlab.engine.trainer import Trainer, TrainSetup
from kdlab.stages.building import build_methods, method_context
from kdlab.tasks.classification import Classification

SETTINGS: dict[str, dict] = {
    "eager float32": {},
    "compile": {"compile": True},
    "channels_last": {"channels_last": True},
    "bf16 autocast": {"amp": True, "amp_dtype": "bf16"},
    "all three": {"compile": True, "channels_last": True, "amp": True, "amp_dtype": "bf16"},
}


@dataclass
class Ready:
    trainer: Trainer
    batches: list
    warmup_s: float  # the untimed first pass (compiling, for compiled settings)


def ready(s: BenchSetup, train: dict) -> Ready:
    data = _data(s)
    teacher, student = _models(s)
    task = Classification(data)
    device = torch.device("cpu")
    methods = [MethodSpec(name="ce", weight=0.5), MethodSpec(name="kd", weight=0.5, tau=s.tau)]
    ms, ws = build_methods(methods, method_context(data, student, [teacher], 1, device, task))
    spec = TrainSpec(epochs=1, optimizer=OptimizerSpec(name="sgd", lr=0.01), schedule=ScheduleSpec(name="constant"),
                     **train)
    trainer = Trainer(TrainSetup(student=student, methods=ms, weights=ws, teachers=[teacher], data=data, task=task,
                                 train=spec, batch_size=s.batch_size, eval_batch_size=256, seed=0, device=device))
    trainer._set_up()
    trainer._enter(0)
    trainer.wrapped.train()
    batches = list(trainer.train_loader)
    t0 = time.perf_counter()
    _steps(trainer, batches)
    return Ready(trainer, batches, time.perf_counter() - t0)


def _steps(trainer: Trainer, batches: list) -> float:
    """Seconds per step over the batches (the loss read once at the end: one host sync)."""
    return sum(_step(trainer, batches, i) for i in range(len(batches))) / len(batches)


def _step(trainer: Trainer, batches: list, i: int) -> float:
    """Seconds of step i, its loss read back (the host waits for the device)."""
    t0 = time.perf_counter()
    float(trainer.step(batches[i], i / len(batches))["total"])
    return time.perf_counter() - t0


def run(s: BenchSetup | None = None, settings: list[str] | None = None, log=print) -> dict:
    s = s or BenchSetup()
    names = ["eager float32", *[n for n in (settings or list(SETTINGS)) if n != "eager float32"]]
    setups = {}
    for n in names:
        setups[n] = ready(s, SETTINGS[n])
        log(f"  {n}: ready (first pass {setups[n].warmup_s:.1f} s)")
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(s.repeats):
        # Step by step, every setting in turn (who goes first rotates): load that changes
        # within a round falls on all settings alike.
        spent = dict.fromkeys(names, 0.0)
        for i in range(s.steps):
            for n in names[(r + i) % len(names):] + names[: (r + i) % len(names)]:
                spent[n] += _step(setups[n].trainer, setups[n].batches, i)
        for n in names:
            times[n].append(spent[n] / s.steps)
        log(f"  round {r + 1}/{s.repeats}: " + ", ".join(f"{n} {v[-1] * 1e3:.1f} ms" for n, v in times.items()))
    base = times["eager float32"]
    return {
        n: {"ms": statistics.median(v) * 1e3, "ratio": statistics.median(x / b for x, b in zip(v, base)),
            "per_round": [x / b for x, b in zip(v, base)], "first_pass_s": setups[n].warmup_s}
        for n, v in times.items()
    }
