"""Does the streaming loader keep the training step fed?

On one image folder (PNG files written for the benchmark), one epoch is timed for: the
in-memory path (every image decoded up front, batches cut on the device) and the streamed
path with 0..N worker processes (each image decoded when its batch is read). Each is timed
reading alone (loader samples/s) and feeding a training step of the student (epoch samples/s);
the streamed epoch over the in-memory one says what streaming costs the training.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kdlab.data.imagefolder import build_imagefolder
from kdlab.engine.loader import make_loader
from kdlab.registry import MODELS


@dataclass
class LoaderSetup:
    images: int = 2048
    image: int = 32
    classes: int = 10
    batch_size: int = 64
    workers: list[int] = field(default_factory=lambda: [0, 1, 2, 4])
    student: str = "resnet8"
    device: str = "cpu"
    repeats: int = 2


def write_images(root: Path, s: LoaderSetup) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(s.images):
        folder = root / f"c{i % s.classes}"
        folder.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (s.image, s.image, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def _epoch(loader, step=None) -> float:
    """Seconds for one pass (a host sync at the end, so queued device work is counted)."""
    t0 = time.perf_counter()
    for batch in loader:
        if step is not None:
            step(batch)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def run(s: LoaderSetup, log=print) -> list[dict]:
    device = torch.device(s.device)
    with tempfile.TemporaryDirectory() as tmp:
        write_images(Path(tmp), s)
        t0 = time.perf_counter()
        mem = build_imagefolder(tmp, image_size=s.image, val_fraction=0.0, test_fraction=0.1, stream=lambda n: False)
        decode_s = time.perf_counter() - t0
        streamed = build_imagefolder(tmp, image_size=s.image, val_fraction=0.0, test_fraction=0.1, stream=lambda n: True)
        log(f"{len(mem.train)} training images; decoding them up front took {decode_s:.2f} s")
        torch.manual_seed(0)
        model = MODELS.get(s.student).obj(num_classes=s.classes, input_shape=(3, s.image, s.image)).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)

        def step(batch):
            loss = F.cross_entropy(model(batch["x"]), batch["y"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        variants = [("in memory", mem.to(device).train, None)] + [
            (f"streamed, {w} workers", streamed.train, w) for w in s.workers]
        rows = []
        for name, split, workers in variants:
            opts = dict(shuffle=True, seed=0, prepare=mem.prepare, augment=mem.augment)
            if workers is not None:
                opts.update(device=device, workers=workers)
            loader = make_loader(split, s.batch_size, **opts)
            read = statistics.median(_epoch(loader) for _ in range(s.repeats))
            train = statistics.median(_epoch(loader, step) for _ in range(s.repeats))
            rows.append({"loader": name, "read_samples_s": len(split) / read, "train_samples_s": len(split) / train,
                         "epoch_s": train})
            log(f"{name}: read {len(split) / read:.0f} samples/s, with the step {len(split) / train:.0f} samples/s")
        base = rows[0]["epoch_s"]
        for r in rows:
            r["epoch_ratio"] = r["epoch_s"] / base
        return rows
