"""MLflow: one MLflow run per kdlab run, in a local SQLite store beside the runs
(`<store>/mlflow.db`; no server) unless `logging.mlflow_uri` names another.

Params are the resolved config flattened (`methods.1.tau`); metrics are the per-epoch
record (step = epoch) and the final summary's test metrics. MLflow's file store refuses to
start in 3.x, hence SQLite. `mlflow ui --backend-store-uri sqlite:///runs/mlflow.db` shows them.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Optional

from kdlab.errors import KdlabError
from kdlab.registry import TRACKERS
from kdlab.tracking.base import Sink, scalars

STATUS = {"done": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
MAX_PARAM_VALUE = 6000  # MLflow's limit on a param value's length


def require() -> None:
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise KdlabError("logging backend 'mlflow' is not installed: pip install 'kdlab[track]' "
                         "(or mlflow==3.17.2)") from None


def flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)) and any(isinstance(v, (dict, list)) for v in obj):
        items = ((str(i), v) for i, v in enumerate(obj))
    else:
        return {prefix: str(obj)[:MAX_PARAM_VALUE]}
    out: dict[str, str] = {}
    for k, v in items:
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def default_uri(run) -> str:
    return f"sqlite:///{(run.store.root / 'mlflow.db').resolve()}"


class MlflowSink(Sink):
    def __init__(self, run, config: dict, spec: dict):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        for name in ("mlflow", "alembic"):  # schema set-up chatter on the first use of a store
            logging.getLogger(name).setLevel(logging.WARNING)
        uri = spec.get("mlflow_uri") or default_uri(run)
        self.client = MlflowClient(uri)
        exp_name = spec.get("mlflow_experiment") or config.get("name") or config.get("teacher_of") or "kdlab"
        found = self.client.get_experiment_by_name(exp_name)
        if found is not None:
            exp_id = found.experiment_id
        else:
            where = None if spec.get("mlflow_uri") else str((run.store.root / "mlartifacts").resolve())
            exp_id = self.client.create_experiment(exp_name, artifact_location=where)
        # A resumed kdlab run continues its MLflow run.
        id_file = run.path / "mlflow_run_id"
        self.run_id = id_file.read_text().strip() if id_file.exists() else None
        if self.run_id is None:
            self.run_id = self.client.create_run(exp_id, run_name=run.id, tags={"kdlab.run_id": run.id}).info.run_id
            id_file.write_text(self.run_id)
            params = [Param(k, v) for k, v in flatten(config).items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(self.run_id, params=params[i:i + 100])
        else:
            self.client.update_run(self.run_id, status="RUNNING")
        self.step = 0

    def _log(self, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, self.step) for k, v in values.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def log_metrics(self, record: dict) -> None:
        self.step = int(record.get("epoch", self.step))
        self._log(scalars(record))

    def finish(self, status: str, summary: Optional[dict]) -> None:
        self._log({k: v for k, v in scalars(summary or {}).items() if k.startswith(("test_", "best_"))})
        self.client.set_terminated(self.run_id, STATUS.get(status, "FINISHED"))


@TRACKERS.register("mlflow", "MLflow runs in <store>/mlflow.db (or logging.mlflow_uri)", require=require)
def open_sink(run, config: dict, spec: dict) -> Sink:
    require()
    return MlflowSink(run, config, spec)
