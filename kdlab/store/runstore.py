"""Run directories (config, metrics as JSON lines, checkpoints, summary) and their index.

Layout under the store root (default `./runs`, or $KDLAB_HOME, or `--store`):

    index.sqlite
    <run id>/config.yaml  metrics.jsonl  summary.json  checkpoints/{last,best}.pt
    <run id>/tb/          TensorBoard events (logging.backends: [tensorboard])
    mlflow.db             MLflow runs (logging.backends: [mlflow])
    tune/<study>.db       Optuna studies (`kdlab tune`)

A run fans its records out to attached sinks (kdlab.tracking): the files here stay the
source of truth, the sinks mirror them.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,          -- teacher | student | stage
    variant TEXT,
    grp TEXT NOT NULL,           -- hash of the config without seeds: runs to average over
    key TEXT,                    -- identity of a reusable artefact (teachers)
    seed INTEGER,
    status TEXT NOT NULL,        -- running | interrupted | done | failed
    created REAL NOT NULL,
    updated REAL NOT NULL,
    path TEXT NOT NULL,
    summary TEXT
);
CREATE INDEX IF NOT EXISTS runs_key ON runs(key);
CREATE INDEX IF NOT EXISTS runs_grp ON runs(grp);
"""


def default_store_root() -> Path:
    return Path(os.environ.get("KDLAB_HOME", "runs"))


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass
class Run:
    id: str
    path: Path
    store: "RunStore"
    sinks: list = field(default_factory=list)  # kdlab.tracking sinks, fed every record

    def attach(self, sink) -> None:
        self.sinks.append(sink)

    def ckpt(self, name: str) -> Path:
        return self.path / "checkpoints" / f"{name}.pt"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def write_config(self, config: dict) -> None:
        _atomic_write_text(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False))

    def log_metrics(self, record: dict) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for sink in self.sinks:
            sink.log_metrics(record)

    def rewrite_metrics(self, history: list[dict]) -> None:
        _atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in history))

    def metrics(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(l) for l in self.metrics_path.read_text().splitlines() if l.strip()]

    def finish(self, status: str, summary: Optional[dict] = None) -> None:
        if summary is not None:
            _atomic_write_text(self.path / "summary.json", json.dumps(summary, indent=2))
        self.store.set_status(self.id, status, summary)
        sinks, self.sinks = self.sinks, []
        for sink in sinks:
            sink.finish(status, summary)


class RunStore:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_store_root()
        self.root.mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / "index.sqlite"
        with self._db() as db:
            db.executescript(SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.db_path, timeout=30)
        db.row_factory = sqlite3.Row
        return db

    def create(self, *, name: str, kind: str, grp: str, seed: int, config: dict, key: str | None = None,
               variant: str | None = None) -> Run:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        label = f"{name}-{variant}" if variant and variant != "main" else name
        label = re.sub(r"[^A-Za-z0-9_.-]+", "-", label)  # ids are directory names: no '/' or spaces
        rid = f"{stamp}-{label}-{kind[0]}s{seed}-{uuid.uuid4().hex[:4]}"
        path = self.root / rid
        (path / "checkpoints").mkdir(parents=True)
        run = Run(rid, path, self)
        run.write_config(config)
        now = time.time()
        with self._db() as db:
            db.execute(
                "INSERT INTO runs (id,name,kind,variant,grp,key,seed,status,created,updated,path) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (rid, name, kind, variant, grp, key, seed, "running", now, now, str(path)),
            )
        return run

    def set_status(self, rid: str, status: str, summary: Optional[dict] = None) -> None:
        with self._db() as db:
            if summary is None:
                db.execute("UPDATE runs SET status=?, updated=? WHERE id=?", (status, time.time(), rid))
            else:
                db.execute(
                    "UPDATE runs SET status=?, updated=?, summary=? WHERE id=?",
                    (status, time.time(), json.dumps(summary), rid),
                )

    def _run(self, row) -> Run:
        return Run(row["id"], Path(row["path"]), self)

    def find_done(self, key: str) -> Optional[Run]:
        """The newest finished run that produced the artefact `key` (e.g. a teacher)."""
        with self._db() as db:
            row = db.execute(
                "SELECT * FROM runs WHERE key=? AND status='done' ORDER BY created DESC LIMIT 1", (key,)
            ).fetchone()
        if row is None or not (Path(row["path"]) / "checkpoints" / "best.pt").exists():
            return None
        return self._run(row)

    def find_resumable(self, grp: str, seed: int, kind: str, variant: str | None) -> Optional[Run]:
        with self._db() as db:
            row = db.execute(
                "SELECT * FROM runs WHERE grp=? AND seed=? AND kind=? AND IFNULL(variant,'')=IFNULL(?,'') "
                "AND status!='done' ORDER BY created DESC LIMIT 1",
                (grp, seed, kind, variant),
            ).fetchone()
        if row is None or not (Path(row["path"]) / "checkpoints" / "last.pt").exists():
            return None
        return self._run(row)

    def rows(self, ids: Optional[list[str]] = None, limit: int | None = None) -> list[dict[str, Any]]:
        with self._db() as db:
            if ids:
                marks = ",".join("?" * len(ids))
                rows = db.execute(f"SELECT * FROM runs WHERE id IN ({marks}) ORDER BY created", ids).fetchall()
            else:
                q = "SELECT * FROM runs ORDER BY created DESC" + (f" LIMIT {int(limit)}" if limit else "")
                rows = db.execute(q).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            d["summary"] = json.loads(d["summary"]) if d["summary"] else {}
            out.append(d)
        return out

    def group_rows(self, grp: str) -> list[dict[str, Any]]:
        with self._db() as db:
            rows = db.execute("SELECT id FROM runs WHERE grp=? AND status='done'", (grp,)).fetchall()
        return self.rows([r["id"] for r in rows]) if rows else []
