"""TensorBoard: event files in `<run dir>/tb/`, so `tensorboard --logdir runs/` shows every run
side by side under its run id (date, config name, variant, kind and seed)."""

from __future__ import annotations

from typing import Optional

from kdlab.errors import KdlabError
from kdlab.registry import TRACKERS
from kdlab.tracking.base import Sink, scalars

GROUPS = ("best_test", "best_val", "train", "val", "test")


def require() -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise KdlabError("logging backend 'tensorboard' is not installed: pip install 'kdlab[track]' "
                         "(or tensorboard==2.21.0)") from None


def tag(key: str) -> str:
    """`train_kd` -> `train/kd`, `val_top1` -> `val/top1`: TensorBoard groups cards by prefix."""
    for g in GROUPS:
        if key.startswith(g + "_"):
            return f"{g}/{key[len(g) + 1:]}"
    return key


class TensorBoardSink(Sink):
    def __init__(self, run):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run.path / "tb"))
        self.step = 0

    def log_metrics(self, record: dict) -> None:
        self.step = int(record.get("epoch", self.step))
        for k, v in scalars(record).items():
            self.writer.add_scalar(tag(k), v, self.step)
        self.writer.flush()

    def finish(self, status: str, summary: Optional[dict]) -> None:
        # Test metrics exist once, at the end: shown at the last epoch.
        final = {k: v for k, v in scalars(summary or {}).items() if k.startswith(("test_", "best_test_"))}
        for k, v in final.items():
            self.writer.add_scalar(tag(k), v, self.step)
        self.writer.close()


@TRACKERS.register("tensorboard", "TensorBoard event files in <run>/tb/", require=require)
def open_sink(run, config: dict, spec: dict) -> Sink:
    require()
    return TensorBoardSink(run)
