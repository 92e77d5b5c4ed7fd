"""Offline teacher logits for language models: disk size per million tokens and step time.

  * size: a top-k cache (k largest logits + their ids + the tail's log-mass) and a sampled
    cache (k drawn ids + the entropy) of a Hugging Face GPT-2 teacher on random token windows,
    built with the teacher-output cache's own store (`tensorcache`); the bytes are the cache
    folder's (arrays, manifest, shard markers) over the tokens it holds.
  * step time: kdlab's training loop (`Trainer`), student GPT-2 with `fkl`, the teacher's
    distribution from its forward pass (online) or from the cache (top-k, sampled), and the
    student with `ce` alone (no teacher at all). Runs alternate within each round and the median
    of the per-round ratios is reported, so load that drifts between rounds cancels. Each step
    is clocked twice: the training thread's CPU time (the step's own work, little moved by
    other processes on a shared machine; run with OMP_NUM_THREADS=1) and the wall clock.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kdlab.config.schema import MethodSpec, ModelSpec, OptimizerSpec, ScheduleSpec, TrainSpec
from kdlab.data.base import DataBundle, Split
from kdlab.engine.module import teacher_outputs
from kdlab.engine.trainer import Trainer, TrainSetup
from kdlab.knowledge.cached import CachedTeacher
from kdlab.knowledge.sparse_logits import sample_fields, topk_fields
from kdlab.models.build import build_model
from kdlab.seeding import seed_everything
from kdlab.stages.building import build_methods, method_context
from kdlab.store import tensorcache
from kdlab.tasks.base import get_task


@dataclass
class LMCacheSetup:
    vocab: int = 8192
    tokens: int = 64  # per sequence
    batch_size: int = 8
    steps: int = 10
    repeats: int = 3
    teacher: dict = field(default_factory=lambda: {"n_layer": 4, "n_embd": 256, "n_head": 4})
    student: dict = field(default_factory=lambda: {"n_layer": 1, "n_embd": 64, "n_head": 2})
    sizes: tuple[int, ...] = (8, 32, 128)  # k of the size measurement
    k: int = 32  # k of the timed caches


def _data(s: LMCacheSetup) -> DataBundle:
    g = torch.Generator().manual_seed(0)
    seq = torch.randint(0, s.vocab, (s.batch_size * s.steps, s.tokens + 1), generator=g)
    train = Split({"x": seq[:, :-1].clone(), "y": seq[:, 1:].clone()})
    empty = Split({k: v[:0] for k, v in train.tensors.items()})
    return DataBundle(train, empty, empty, s.vocab, (s.tokens,), task="lm", model_args={"vocab_size": s.vocab})


def _gpt2(s: LMCacheSetup, shape: dict, data: DataBundle, role: str):
    seed_everything(0)
    cfg = {"model_type": "gpt2", "n_positions": s.tokens, "bos_token_id": 0, "eos_token_id": 0, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
           **shape}
    return build_model(ModelSpec(hf={"config": cfg, "kind": "causal_lm"}), data, role)


def build_cache(s: LMCacheSetup, where: str, mode: str, k: int) -> CachedTeacher:
    """The teacher's top-k or sampled distributions on the bench data, as teacher.cache stores them."""
    data = _data(s)
    teacher = _gpt2(s, s.teacher, data, "teacher").eval()
    task, split = get_task(data), data.train

    def compute(a: int, b: int) -> dict:
        batch = {key: v[a:b] for key, v in split.tensors.items()}
        logits = teacher_outputs(task, teacher, None, batch).logits
        f = topk_fields(logits, k) if mode == "topk" else sample_fields(logits, k, torch.Generator().manual_seed(a))
        return {f"logits.{name}": v.numpy() for name, v in f.items()}

    n = len(split)
    extra = {"samples": n, "views": 0, "width": s.vocab, "topk": k if mode == "topk" else None,
             "sampled": k if mode == "sampled" else None}
    cache = tensorcache.build(where, {"bench": mode, "k": k}, n, s.batch_size, compute, extra)
    return CachedTeacher(cache, torch.device("cpu"))


def sizes(s: LMCacheSetup) -> list[dict]:
    out = []
    tokens = s.batch_size * s.steps * s.tokens
    with tempfile.TemporaryDirectory() as root:
        for mode in ("topk", "sampled"):
            for k in s.sizes:
                where = Path(root, f"{mode}{k}")
                build_cache(s, str(where), mode, k)
                size = tensorcache.size_bytes(where)
                out.append({"mode": mode, "k": k, "bytes": size, "tokens": tokens,
                            "mib_per_million_tokens": size / tokens * 1e6 / 2**20})
    return out


class _ClockedTrainer(Trainer):
    """Adds up the CPU time of the training thread inside the steps: on a shared machine the
    wall clock mostly measures the other processes; with one intra-op thread, the thread's CPU
    time is the step's own work (teacher or cache read, student, loss, optimiser)."""

    cpu = 0.0

    def step(self, batch, t):
        t0 = time.thread_time()
        out = super().step(batch, t)
        self.cpu += time.thread_time() - t0
        return out


def step_time(s: LMCacheSetup, methods: list[MethodSpec], cache: CachedTeacher | None = None,
              teacher: bool = True) -> tuple[float, float]:
    """(CPU seconds, wall seconds) per step of one epoch of kdlab's training loop."""
    data = _data(s)
    t = _gpt2(s, s.teacher, data, "teacher").eval()
    student = _gpt2(s, s.student, data, "student")
    task, device = get_task(data), torch.device("cpu")
    teachers = [t] if teacher else []
    ms, ws = build_methods(methods, method_context(data, student, teachers, 1, device, task))
    spec = TrainSpec(epochs=1, optimizer=OptimizerSpec(name="adam", lr=1e-3), schedule=ScheduleSpec(name="constant"))
    trainer = _ClockedTrainer(TrainSetup(student=student, methods=ms, weights=ws, teachers=teachers, data=data, task=task,
                                 train=spec, batch_size=s.batch_size, eval_batch_size=64, seed=0, device=device,
                                 teacher_caches=[cache] if cache is not None else []))
    wall = trainer.fit().history[0]["train_time"] / s.steps
    return trainer.cpu / s.steps, wall


def run(s: LMCacheSetup | None = None, log=print) -> dict:
    s = s or LMCacheSetup()
    fkl, ce = [MethodSpec(name="fkl")], [MethodSpec(name="ce")]
    names = ("online_fkl", "topk_fkl", "sampled_fkl", "ce")
    cpu: dict[str, list[float]] = {k: [] for k in names}
    wall: dict[str, list[float]] = {k: [] for k in names}
    with tempfile.TemporaryDirectory() as root:
        top = build_cache(s, str(Path(root, "topk")), "topk", s.k)
        drawn = build_cache(s, str(Path(root, "sampled")), "sampled", s.k)
        step_time(s, ce, teacher=False)  # warm-up: allocator, kernels
        for r in range(s.repeats):
            for name, args in zip(names, ((fkl,), (fkl, top), (fkl, drawn), (ce, None, False))):
                c, w = step_time(s, *args)
                cpu[name].append(c)
                wall[name].append(w)
            log(f"  round {r + 1}/{s.repeats}, CPU ms per step: " + ", ".join(f"{k} {v[-1] * 1e3:.1f}" for k, v in cpu.items()))

    def ratio(times: dict, a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

    pairs = {"topk_over_online": ("topk_fkl", "online_fkl"), "sampled_over_online": ("sampled_fkl", "online_fkl"),
             "online_over_ce": ("online_fkl", "ce"), "topk_over_ce": ("topk_fkl", "ce"), "sampled_over_ce": ("sampled_fkl", "ce")}
    return {
        **{f"{k}_cpu_ms": statistics.median(v) * 1e3 for k, v in cpu.items()},
        **{f"{k}_wall_ms": statistics.median(v) * 1e3 for k, v in wall.items()},
        **{k: ratio(cpu, *v) for k, v in pairs.items()},
        **{f"wall_{k}": ratio(wall, *v) for k, v in pairs.items()},
        "rounds_cpu_ms": {k: [round(x * 1e3, 1) for x in v] for k, v in cpu.items()},
        "sizes": sizes(s),
    }
