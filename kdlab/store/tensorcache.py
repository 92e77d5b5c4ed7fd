"""A directory of row-aligned arrays, memory-mapped, built in shards and resumable.

Layout:

    manifest.json       what the cache was made from (`made_from`), its rows and fields
    <field>.npy         one array per field, row r of each belonging together
    shards/<i>.done     rows [i * shard_rows, (i + 1) * shard_rows) are written and flushed
    COMPLETE            every shard is done: the cache may be read

A build killed at any moment leaves its finished shards marked; the next build computes
only the others. Readers open only complete caches, read-only (np.memmap): rows are paged in
as they are indexed, so a cache larger than memory still works.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from kdlab.errors import KdlabError

MANIFEST, COMPLETE, FORMAT = "manifest.json", "COMPLETE", 1


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


def differences(stored: dict, wanted: dict) -> list[str]:
    """Keys whose values differ between two `made_from` records (dotted for nested dicts)."""
    out = []
    for k in sorted(set(stored) | set(wanted)):
        a, b = stored.get(k), wanted.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{k}.{d}" for d in differences(a, b)]
        elif json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
            out.append(k)
    return out


@dataclass
class TensorCache:
    """A complete cache, opened read-only."""

    path: Path
    manifest: dict
    arrays: dict[str, np.ndarray]

    @classmethod
    def open(cls, path: str | Path, made_from: Optional[dict] = None) -> "TensorCache":
        """The complete cache at `path`; KdlabError naming what differs when `made_from` is
        given and the cache was made from something else."""
        path = Path(path)
        if not (path / COMPLETE).exists():
            raise KdlabError(f"teacher cache {path} is not complete (its build was stopped): run again to finish it")
        manifest = json.loads((path / MANIFEST).read_text())
        if made_from is not None:
            check_made_from(path, manifest["made_from"], made_from)
        arrays = {f: np.load(path / f"{f}.npy", mmap_mode="r") for f in manifest["fields"]}
        return cls(path, manifest, arrays)

    @property
    def rows(self) -> int:
        return int(self.manifest["rows"])

    def read(self, field: str, rows: np.ndarray) -> np.ndarray:
        return self.arrays[field][rows]


def check_made_from(path: Path, stored: dict, wanted: dict) -> None:
    diff = differences(stored, wanted)
    if diff:
        raise KdlabError(
            f"teacher cache {path} was made from another {', '.join(diff)} than this run's: delete it "
            "(it is rebuilt) or give teacher.cache.path another folder"
        )


def size_bytes(path: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def build(path: str | Path, made_from: dict, rows: int, shard_rows: int,
          compute: Callable[[int, int], dict[str, np.ndarray]], extra: Optional[dict] = None,
          on_shard: Optional[Callable[[int, int], None]] = None) -> TensorCache:
    """Fill the cache at `path` with `compute(start, stop)` (a dict of arrays with stop-start
    rows each) shard by shard, skipping shards a stopped build finished. A partial cache made
    from something else is removed and started afresh. Callers hold a lock: one builder at a time."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        if (path / COMPLETE).exists():
            check_made_from(path, old["made_from"], made_from)
            return TensorCache.open(path)
        if differences(old["made_from"], made_from) or old.get("shard_rows") != shard_rows or old.get("rows") != rows:
            shutil.rmtree(path)
    (path / "shards").mkdir(parents=True, exist_ok=True)
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {
        "format": FORMAT, "made_from": made_from, "rows": rows, "shard_rows": shard_rows, "fields": {}, **(extra or {})}
    arrays: dict[str, np.ndarray] = {}
    for f in manifest["fields"]:
        arrays[f] = np.load(path / f"{f}.npy", mmap_mode="r+")
    shards = -(-rows // shard_rows)
    for i in range(shards):
        marker = path / "shards" / f"{i:06d}.done"
        if marker.exists():
            continue
        start, stop = i * shard_rows, min(rows, (i + 1) * shard_rows)
        out = compute(start, stop)
        if not manifest["fields"]:  # the first shard fixes each field's per-row shape and dtype
            manifest["fields"] = {k: {"shape": list(v.shape[1:]), "dtype": str(v.dtype)} for k, v in out.items()}
            for k, v in out.items():
                arrays[k] = np.lib.format.open_memmap(path / f"{k}.npy", mode="w+", dtype=v.dtype,
                                                      shape=(rows, *v.shape[1:]))
            _write_json(manifest_path, manifest)
        for k, v in out.items():
            arrays[k][start:stop] = v
            arrays[k].flush()
        marker.touch()
        if on_shard is not None:
            on_shard(i, shards)
    del arrays
    _write_json(manifest_path, manifest)
    (path / COMPLETE).touch()
    return TensorCache.open(path)


def list_caches(root: str | Path) -> Iterator[tuple[Path, dict, bool]]:
    """(folder, manifest, complete) of every cache under `root`."""
    root = Path(root)
    if not root.is_dir():
        return
    for d in sorted(root.iterdir()):
        m = d / MANIFEST
        if m.exists():
            yield d, json.loads(m.read_text()), (d / COMPLETE).exists()
