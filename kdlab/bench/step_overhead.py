"""Step-time overhead of kdlab's engine.

Three ratios, measured in one process on the same in-memory data, models and batch size:
  1. kdlab's KD training step / a minimal hand-written PyTorch KD loop doing the same work
     (teacher in inference mode, CE + tau^2-scaled KL, SGD) — the engine's overhead (goal <= 1.05);
  2. kdlab's KD step / kdlab's plain CE step — the price of distillation itself;
  3. kdlab's KD step with the teacher's logits read from a teacher-output cache / kdlab's CE
     step — what is left of that price once the teacher's forward pass is paid once (goal <= 1.05).
Runs alternate (A B A B ...) and the median of the per-repeat ratios is reported, so drift on a
busy machine affects both sides alike.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdlab.config.schema import MethodSpec, OptimizerSpec, ScheduleSpec, TrainSpec
from kdlab.bench.synthetic_images import random_images
from kdlab.data.base import DataBundle
from kdlab.seeding import seed_everything
from kdlab.engine.trainer import Trainer, TrainSetup
from kdlab.knowledge.cached import CachedTeacher
from kdlab.store import tensorcache
from kdlab.stages.building import build_methods, method_context
from kdlab.registry import MODELS
from kdlab.tasks.classification import Classification


@dataclass
class BenchSetup:
    teacher: str = "resnet32"
    student: str = "resnet8"
    batch_size: int = 64
    steps: int = 20
    repeats: int = 3
    image: int = 32
    num_classes: int = 100
    tau: float = 4.0


def _data(s: BenchSetup) -> DataBundle:
    return random_images(s.batch_size * s.steps, 0, s.image, s.num_classes)


def _models(s: BenchSetup):
    seed_everything(0)
    shape = (3, s.image, s.image)
    teacher = MODELS.get(s.teacher).obj(num_classes=s.num_classes, input_shape=shape).eval()
    student = MODELS.get(s.student).obj(num_classes=s.num_classes, input_shape=shape)
    return teacher, student


def teacher_cache(s: BenchSetup, where: str) -> CachedTeacher:
    """The bench teacher's logits on the bench data, stored once (as `teacher.cache` does)."""
    data = _data(s)
    teacher, _ = _models(s)
    x = data.train["x"]

    def compute(a: int, b: int) -> dict:
        with torch.inference_mode():
            return {"logits": teacher(x[a:b]).numpy()}

    cache = tensorcache.build(where, {"bench": True}, len(x), s.batch_size, compute, {"samples": len(x), "views": 0})
    return CachedTeacher(cache, torch.device("cpu"))


def kdlab_step_times(s: BenchSetup, methods: list[MethodSpec], cache: CachedTeacher | None = None) -> list[float]:
    """Per-step seconds of one epoch of kdlab's real training loop (evaluation excluded)."""
    data = _data(s)
    teacher, student = _models(s)
    task = Classification(data)
    device = torch.device("cpu")
    uses_teacher = any(m.name != "ce" for m in methods)
    teachers = [teacher] if uses_teacher else []
    ms, ws = build_methods(methods, method_context(data, student, teachers, 1, device, task))
    spec = TrainSpec(epochs=1, optimizer=OptimizerSpec(name="sgd", lr=0.01), schedule=ScheduleSpec(name="constant"))
    trainer = Trainer(TrainSetup(student=student, methods=ms, weights=ws, teachers=teachers, data=data, task=task,
                                 train=spec, batch_size=s.batch_size, eval_batch_size=256, seed=0, device=device,
                                 teacher_caches=[cache] if cache is not None else []))
    res = trainer.fit()
    return [res.history[0]["train_time"] / s.steps]


def handwritten_step_times(s: BenchSetup) -> list[float]:
    """The same work written directly: the baseline an expert would write."""
    data = _data(s)
    teacher, student = _models(s)
    teacher.requires_grad_(False)
    opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x_all, y_all = data.train["x"], data.train["y"]
    perm = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(0))
    tau = s.tau
    student.train()
    t0 = time.perf_counter()
    for b in range(s.steps):
        idx = perm[b * s.batch_size : (b + 1) * s.batch_size]
        x, y = x_all[idx], y_all[idx]
        with torch.inference_mode():
            t_logits = teacher(x)
        t_logits = t_logits.clone()
        logits = student(x)
        kl = F.kl_div(F.log_softmax(logits / tau, -1), F.log_softmax(t_logits / tau, -1), reduction="batchmean",
                      log_target=True)
        loss = 0.5 * F.cross_entropy(logits, y) + 0.5 * tau * tau * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return [(time.perf_counter() - t0) / s.steps]


def run(s: BenchSetup | None = None, log=print) -> dict[str, float]:
    s = s or BenchSetup()
    kd = [MethodSpec(name="ce", weight=0.5), MethodSpec(name="kd", weight=0.5, tau=s.tau)]
    ce = [MethodSpec(name="ce")]
    times: dict[str, list[float]] = {"kdlab_kd": [], "hand_kd": [], "kdlab_ce": [], "cached_kd": []}
    handwritten_step_times(s)  # warm-up: allocator, kernels
    with tempfile.TemporaryDirectory() as where:
        cache = teacher_cache(s, where)
        for r in range(s.repeats):
            times["hand_kd"] += handwritten_step_times(s)
            times["kdlab_kd"] += kdlab_step_times(s, kd)
            times["kdlab_ce"] += kdlab_step_times(s, ce)
            times["cached_kd"] += kdlab_step_times(s, kd, cache)
            log(f"  repeat {r + 1}/{s.repeats}: " + ", ".join(f"{k} {v[-1] * 1e3:.1f} ms" for k, v in times.items()))
    med = {k: statistics.median(v) for k, v in times.items()}

    def ratio(a: str, b: str) -> float:
        # The median of each repeat's own ratio: both sides of a ratio ran back to back, so load
        # that drifts between repeats on a shared machine cancels out.
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

    return {
        **{f"{k}_ms": v * 1e3 for k, v in med.items()},
        "engine_overhead_ratio": ratio("kdlab_kd", "hand_kd"),
        "kd_over_ce_ratio": ratio("kdlab_kd", "kdlab_ce"),
        "cached_kd_over_ce_ratio": ratio("cached_kd", "kdlab_ce"),
        "threads": torch.get_num_threads(),
    }
