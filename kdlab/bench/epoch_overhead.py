"""How much of a run's time goes outside its training steps (validation, checkpoint writes,
the final test), with a full checkpoint and a validation every epoch against every N epochs
(`train.checkpoint_every`, `train.eval_every`). Runs alternate, as in the step benchmark."""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass

import torch

from kdlab.config.schema import MethodSpec, OptimizerSpec, ScheduleSpec, TrainSpec
from kdlab.bench.synthetic_images import random_images
from kdlab.data.base import DataBundle
from kdlab.engine.trainer import Trainer, TrainSetup
from kdlab.registry import MODELS
from kdlab.seeding import seed_everything
from kdlab.stages.building import build_methods, method_context
from kdlab.stages.stage import StoreRecorder
from kdlab.store.runstore import RunStore
from kdlab.tasks.classification import Classification


@dataclass
class EpochSetup:
    model: str = "resnet8"
    image: int = 32
    num_classes: int = 100
    batch_size: int = 64
    steps: int = 20  # training steps per epoch
    val: int = 1000
    epochs: int = 5
    every: int = 5
    repeats: int = 2


def _data(s: EpochSetup) -> DataBundle:
    return random_images(s.batch_size * s.steps, s.val, s.image, s.num_classes)


def one_run(s: EpochSetup, every: int) -> dict[str, float]:
    """Seconds of a whole `fit` (checkpoints into a real run folder) and of its training steps."""
    data = _data(s)
    seed_everything(0)
    model = MODELS.get(s.model).obj(num_classes=s.num_classes, input_shape=(3, s.image, s.image))
    task = Classification(data)
    ms, ws = build_methods([MethodSpec(name="ce")], method_context(data, model, [], s.epochs, torch.device("cpu"), task))
    spec = TrainSpec(epochs=s.epochs, optimizer=OptimizerSpec(lr=0.01), schedule=ScheduleSpec(name="constant"),
                     checkpoint_every=every, eval_every=every)
    with tempfile.TemporaryDirectory() as root:
        run = RunStore(root).create(name="bench", kind="student", grp="bench", seed=0, config={})
        trainer = Trainer(TrainSetup(student=model, methods=ms, weights=ws, data=data, task=task, train=spec,
                                     batch_size=s.batch_size, eval_batch_size=256, seed=0, device=torch.device("cpu")),
                          recorder=StoreRecorder(run))
        t0 = time.perf_counter()
        res = trainer.fit()
        wall = time.perf_counter() - t0
        run.release()
    steps = sum(h["train_time"] for h in res.history)
    return {"wall": wall, "steps": steps, "outside": 1 - steps / wall}


def run(s: EpochSetup | None = None, log=print) -> dict[str, float]:
    s = s or EpochSetup()
    out: dict[str, list[float]] = {"every_1": [], f"every_{s.every}": []}
    for r in range(s.repeats):
        for every in (1, s.every):
            res = one_run(s, every)
            out[f"every_{every}"].append(res["outside"])
            log(f"  repeat {r + 1}: every {every}: run {res['wall']:.2f} s, steps {res['steps']:.2f} s, "
                f"outside the steps {100 * res['outside']:.1f}%")
    return {k: statistics.median(v) for k, v in out.items()}
