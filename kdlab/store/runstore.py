"""Run directories (config, metrics as JSON lines, checkpoints, summary) and their index.

Layout under the store root (default `./runs`, or $KDLAB_HOME, or `--store`):

    index.sqlite
    locks/<key>.lock        held while a reusable artefact (a teacher) is being made
    <run id>/config.yaml  metrics.jsonl  summary.json  checkpoints/{last,best}.pt  .lock
             model.safetensors (the finished model)  hf/ (the same, for a Hugging Face model)
    <run id>/tb/            TensorBoard events (logging.backends: [tensorboard])
    mlflow.db               MLflow runs (logging.backends: [mlflow])
    tune/<study>.db         Optuna studies (`kdlab tune`)
    generations/<key>/      a teacher's generated outputs (seqkd): tokens.safetensors, meta.json

A run's `.lock` is held (flock) by the process training it, and the operating system lets go
of it when that process ends, however it ends: a `running` row whose lock is free belongs to
a process that was killed, so the run is shown, and resumed, as interrupted.

A run fans its records out to attached sinks (kdlab.tracking): the files here stay the
source of truth, the sinks mirror them.
"""

from __future__ import annotations

import contextlib
import fcntl
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

from kdlab.errors import KdlabError
from kdlab.store.locks import file_lock

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,          -- teacher | student | assistant (a TAKD link)
    variant TEXT,
    grp TEXT NOT NULL,           -- hash of the config without seeds: runs to average over
    key TEXT,                    -- identity of a reusable artefact (teachers)
    seed INTEGER,
    status TEXT NOT NULL,        -- running | interrupted | done | failed
    created REAL NOT NULL,
    updated REAL NOT NULL,
    path TEXT NOT NULL,
    summary TEXT,
    metric TEXT,                 -- the task's primary metric (top1, ppl, ndcg20)
    score REAL                   -- its test value at the best-validation epoch
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


def _lock_free(path: Path) -> bool:
    """Whether no process holds the lock file (a run's process alive holds it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing releases a lock this call took


@dataclass
class Run:
    id: str
    path: Path
    store: "RunStore"
    sinks: list = field(default_factory=list)  # kdlab.tracking sinks, fed every record
    _fd: Optional[int] = None  # the held `.lock` of a run this process trains

    def attach(self, sink) -> None:
        self.sinks.append(sink)

    def hold(self) -> None:
        """Mark the run as alive for as long as this process trains it."""
        if self._fd is None:
            self._fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

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

    def metrics(self) -> list[dict]:
        """The epochs recorded so far (a resumed run's earlier ones included)."""
        if not self.metrics_path.exists():
            return []
        return [json.loads(l) for l in self.metrics_path.read_text().splitlines() if l.strip()]

    def rewrite_metrics(self, history: list[dict]) -> None:
        _atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in history))

    def finish(self, status: str, summary: Optional[dict] = None, metric_value: Optional[float] = None) -> None:
        if summary is not None:
            _atomic_write_text(self.path / "summary.json", json.dumps(summary, indent=2))
        self.store.set_status(self.id, status, summary, metric_value)
        self.release()
        sinks, self.sinks = self.sinks, []
        for sink in sinks:
            sink.finish(status, summary)


class RunStore:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_store_root()
        self.db_path = self.root / "index.sqlite"
        self._open()

    def _open(self) -> None:
        """Create the root and index, or a KdlabError saying why the store cannot be used."""
        fix = "give --store (or $KDLAB_HOME) a writable directory"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise KdlabError(f"run store '{self.root}' is a file, not a directory; {fix}") from None
        except NotADirectoryError:
            raise KdlabError(f"run store '{self.root}' lies under a file, not a directory; {fix}") from None
        except OSError as e:
            raise KdlabError(f"cannot create run store '{self.root}': {e.strerror or e}; {fix}") from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise KdlabError(f"run store '{self.root}' is not writable; {fix}")
        try:
            with self._db() as db:
                db.executescript(SCHEMA)
                cols = {r["name"] for r in db.execute("PRAGMA table_info(runs)")}
                for col, kind in (("metric", "TEXT"), ("score", "REAL")):  # stores made before these columns
                    if col not in cols:
                        db.execute(f"ALTER TABLE runs ADD COLUMN {col} {kind}")
        except sqlite3.Error as e:
            raise KdlabError(f"cannot open the run index '{self.db_path}': {e}; {fix}") from None

    def _db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.db_path, timeout=30)
        db.row_factory = sqlite3.Row
        return db

    def create(self, *, name: str, kind: str, grp: str, seed: int, config: dict, key: str | None = None,
               variant: str | None = None, metric: str | None = None) -> Run:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        label = f"{name}-{variant}" if variant and variant != "main" else name
        label = re.sub(r"[^A-Za-z0-9_.-]+", "-", label)  # ids are directory names: no '/' or spaces
        rid = f"{stamp}-{label}-{kind[0]}s{seed}-{uuid.uuid4().hex[:4]}"
        path = self.root / rid
        (path / "checkpoints").mkdir(parents=True)
        run = Run(rid, path, self)
        run.hold()  # before the row exists, so no reader ever sees it running without its holder
        run.write_config(config)
        now = time.time()
        with self._db() as db:
            db.execute(
                "INSERT INTO runs (id,name,kind,variant,grp,key,seed,status,created,updated,path,metric) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (rid, name, kind, variant, grp, key, seed, "running", now, now, str(path), metric),
            )
        return run

    @contextlib.contextmanager
    def lock(self, key: str):
        """Hold `locks/<key>.lock` (waiting for another process that holds it)."""
        with file_lock(self.root / "locks" / f"{key}.lock"):
            yield

    def set_status(self, rid: str, status: str, summary: Optional[dict] = None,
                   metric_value: Optional[float] = None) -> None:
        with self._db() as db:
            if summary is None:
                db.execute("UPDATE runs SET status=?, updated=? WHERE id=?", (status, time.time(), rid))
            else:
                db.execute(
                    "UPDATE runs SET status=?, updated=?, summary=?, score=? WHERE id=?",
                    (status, time.time(), json.dumps(summary), metric_value, rid),
                )

    @staticmethod
    def _status(row) -> str:
        """The stored status, except that a `running` run whose process is gone is interrupted."""
        if row["status"] == "running" and _lock_free(Path(row["path"]) / ".lock"):
            return "interrupted"
        return row["status"]

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

    def _same_stage(self, grp: str, seed: int, kind: str, variant: str | None, status_sql: str) -> list:
        with self._db() as db:
            return db.execute(
                "SELECT * FROM runs WHERE grp=? AND seed=? AND kind=? AND IFNULL(variant,'')=IFNULL(?,'') "
                f"AND {status_sql} ORDER BY created DESC",
                (grp, seed, kind, variant),
            ).fetchall()

    def find_finished(self, grp: str, seed: int, kind: str, variant: str | None) -> Optional[Run]:
        """The newest finished run of this stage whose checkpoint is still there."""
        for row in self._same_stage(grp, seed, kind, variant, "status='done'"):
            if (Path(row["path"]) / "checkpoints" / "last.pt").exists():
                return self._run(row)
        return None

    def find_resumable(self, grp: str, seed: int, kind: str, variant: str | None) -> Optional[Run]:
        """The newest unfinished run of this stage that no live process is training."""
        for row in self._same_stage(grp, seed, kind, variant, "status!='done'"):
            if self._status(row) != "running" and Path(row["path"]).is_dir():
                return self._run(row)
        return None

    def resolve(self, given: str) -> dict[str, Any]:
        """The row of the run whose id is `given` or starts with it (one clear line otherwise)."""
        every = self.rows()
        hits = [r for r in every if r["id"] == given] or [r for r in every if r["id"].startswith(given)]
        if not hits:
            raise KdlabError(f"no run '{given}' in {self.root}; `kdlab runs` lists them")
        if len(hits) > 1:
            raise KdlabError(f"'{given}' matches {len(hits)} runs ({hits[0]['id']}, {hits[1]['id']}, …); give more of the id")
        return hits[0]

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
            d["status"] = self._status(r)
            d["summary"] = json.loads(d["summary"]) if d["summary"] else {}
            out.append(d)
        return out
