"""Per-method cost: step time and peak memory of each distillation method relative to plain CE
training of the same student, on the same random data, in one run.

Each (method, repeat) trains in a fresh subprocess, so its memory peak is its own:
  * time: mean step time of the second of two epochs of kdlab's real training loop (the first
    epoch absorbs the methods' lazy `build()` and allocator warm-up); median over repeats, which
    alternate over the methods (m1 m2 ... m1 m2 ...) so machine drift hits all alike.
  * memory on CPU: the process's resident-set high-water mark (VmHWM) during training, after it
    was reset (/proc/self/clear_refs) once data, teacher, student and optimiser state were set up.
    "extra" = that peak minus the resident set just before training: what the step itself
    allocates (activations, gradients, method buffers such as CRD's banks), independent of the
    interpreter and torch library footprint. On CUDA: torch.cuda.max_memory_allocated over the
    same window, minus the allocation before it.
The teacher's forward pass is part of each distillation method's cost (CE has none).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from dataclasses import asdict, dataclass, field

import torch

from kdlab.bench.peak_memory import run_case, start_window, window_peak
from kdlab.bench.step_overhead import BenchSetup, _data, _models
from kdlab.config.schema import MethodSpec, OptimizerSpec, ScheduleSpec, TrainSpec
from kdlab.errors import KdlabError

# ce + the method at its CIFAR-100 weights (configs/cifar100/README.md); crd at its defaults
# (16384 negatives), reviewkd without warm-up so the step does the full work.
ZOO: dict[str, list[dict]] = {
    "ce": [{"name": "ce"}],
    "kd": [{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9, "tau": 4.0}],
    "dkd": [{"name": "ce"}, {"name": "dkd", "beta": 8.0, "warmup": 0}],
    "dist": [{"name": "ce"}, {"name": "dist", "beta": 2.0, "gamma": 2.0, "tau": 4.0}],
    "ctkd": [{"name": "ce", "weight": 0.1}, {"name": "ctkd", "weight": 0.9}],
    "fitnet": [{"name": "ce"}, {"name": "fitnet", "weight": 100.0}],
    "at": [{"name": "ce"}, {"name": "at", "weight": 1000.0}],
    "sp": [{"name": "ce"}, {"name": "sp", "weight": 3000.0}],
    "cc": [{"name": "ce"}, {"name": "cc"}],
    "vid": [{"name": "ce"}, {"name": "vid"}],
    "rkd": [{"name": "ce"}, {"name": "rkd"}],
    "pkt": [{"name": "ce"}, {"name": "pkt", "weight": 30000.0}],
    "ab": [{"name": "ce"}, {"name": "ab"}],
    "ft": [{"name": "ce"}, {"name": "ft", "weight": 200.0}],
    "fsp": [{"name": "ce"}, {"name": "fsp", "weight": 50.0}],
    "nst": [{"name": "ce"}, {"name": "nst", "weight": 50.0}],
    "crd": [{"name": "ce"}, {"name": "crd", "weight": 0.8}],
    "reviewkd": [{"name": "ce"}, {"name": "reviewkd", "warmup_epochs": 0}],
    "ofd": [{"name": "ce"}, {"name": "ofd"}],
}


@dataclass
class CostSetup(BenchSetup):
    teacher: str = "resnet20"
    student: str = "resnet8"
    steps: int = 10
    repeats: int = 2
    device: str = "cpu"
    methods: list[str] = field(default_factory=lambda: list(ZOO))


def measure_one(s: CostSetup, method: str) -> dict:
    """Train one method (in this process) and return its step time and memory figures."""
    from kdlab.engine.trainer import Trainer, TrainSetup
    from kdlab.stages.building import build_methods, method_context
    from kdlab.tasks.classification import Classification

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    device = torch.device(s.device)
    data = _data(s).to(device)
    teacher, student = _models(s)
    specs = [MethodSpec(**m) for m in ZOO[method]]
    teachers = [teacher] if any(m.name != "ce" for m in specs) else []
    task = Classification(data)
    ms, ws = build_methods(specs, method_context(data, student, teachers, 2, device, task))
    train = TrainSpec(epochs=2, optimizer=OptimizerSpec(name="sgd", lr=0.01), schedule=ScheduleSpec(name="constant"))
    trainer = Trainer(TrainSetup(student=student, methods=ms, weights=ws, teachers=teachers, data=data, task=task,
                                 train=train, batch_size=s.batch_size, eval_batch_size=256, seed=0, device=device))
    base = start_window(device)
    res = trainer.fit()
    peak = window_peak(device)
    return {"method": method, "step_s": res.history[-1]["train_time"] / s.steps, "peak_bytes": peak,
            "extra_bytes": peak - base}


def _child(s: CostSetup, method: str) -> dict:
    return run_case("kdlab.bench.method_cost", [json.dumps(asdict(s)), method], f"method '{method}'")


def run(s: CostSetup | None = None, log=print) -> list[dict]:
    """Rows per method: median step time and memory, and their ratios to CE."""
    s = s or CostSetup()
    unknown = [m for m in s.methods if m not in ZOO]
    if unknown:
        raise KdlabError(f"unknown method(s) {', '.join(unknown)} for the cost benchmark; known: {', '.join(ZOO)}")
    methods = ["ce"] + [m for m in s.methods if m != "ce"]
    got: dict[str, list[dict]] = {m: [] for m in methods}
    for r in range(s.repeats):
        for m in methods:
            got[m].append(_child(s, m))
            log(f"  repeat {r + 1}/{s.repeats} {m}: {got[m][-1]['step_s'] * 1e3:.1f} ms/step, "
                f"extra {got[m][-1]['extra_bytes'] / 2**20:.0f} MiB")
    med = {m: {k: statistics.median(x[k] for x in v) for k in ("step_s", "peak_bytes", "extra_bytes")}
           for m, v in got.items()}
    ce = med["ce"]
    return [{"method": m, **v, "time_ratio": v["step_s"] / ce["step_s"],
             "extra_ratio": v["extra_bytes"] / ce["extra_bytes"] if ce["extra_bytes"] > 0 else float("nan")}
            for m, v in med.items()]


if __name__ == "__main__":  # the per-method subprocess: python -m kdlab.bench.method_cost '<setup json>' METHOD
    setup = CostSetup(**json.loads(sys.argv[1]))
    print(json.dumps(measure_one(setup, sys.argv[2])))
