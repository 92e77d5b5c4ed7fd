"""Implicit feedback from a local interactions file: MovieLens `u.data` (tab-separated),
`ratings.dat` (`::`-separated), or a CSV/TSV of user, item[, rating][, timestamp] (a header
line is skipped). Every row is an interaction unless `min_rating` keeps only the rows rated
at least that much."""

# No `from __future__ import annotations`: the builder's annotations are read at run time
# (config validation builds a pydantic model from the signature).
from pathlib import Path
from typing import Optional

import numpy as np

from kdlab.data.base import DataBundle
from kdlab.data.recsys_split import ranking_bundle
from kdlab.errors import KdlabError
from kdlab.registry import DATASETS


def _separator(line: str) -> Optional[str]:
    if "::" in line:
        return "::"
    if "\t" in line:
        return "\t"
    if "," in line:
        return ","
    return None  # whitespace


def parse_interactions(path: str, min_rating: Optional[float] = None) -> tuple[np.ndarray, np.ndarray]:
    """(users, items) of the file's rows; clear errors for missing columns and bad ids."""
    p = Path(path)
    if not p.is_file():
        raise KdlabError(f"interactions file '{path}' does not exist; set data.params.path to a u.data, ratings.dat or CSV file")
    lines = [ln for ln in p.read_text(errors="replace").splitlines() if ln.strip()]
    if not lines:
        raise KdlabError(f"interactions file '{path}' is empty")
    sep = _separator(lines[0])
    start = 0
    first = [f.strip() for f in lines[0].split(sep)]
    if len(first) >= 2 and not first[0].lstrip("-").isdigit() and not first[1].lstrip("-").isdigit():
        start = 1  # a header such as "user,item,rating,timestamp"
    users = np.empty(len(lines) - start, dtype=np.int64)
    items = np.empty(len(lines) - start, dtype=np.int64)
    keep = np.ones(len(lines) - start, dtype=bool)
    for n, line in enumerate(lines[start:]):
        fields = line.split(sep)
        where = f"{path} line {n + start + 1}"
        if len(fields) < 2:
            raise KdlabError(
                f"{where} has {len(fields)} column(s) ({line.strip()[:60]!r}); expected user, item[, rating][, timestamp]"
            )
        try:
            users[n], items[n] = int(fields[0]), int(fields[1])
        except ValueError:
            raise KdlabError(
                f"{where}: user and item ids must be integers, found {fields[0].strip()[:30]!r} and {fields[1].strip()[:30]!r}"
            ) from None
        if min_rating is not None:
            if len(fields) < 3:
                raise KdlabError(f"{where} has no rating column, but min_rating={min_rating} was set")
            try:
                keep[n] = float(fields[2]) >= min_rating
            except ValueError:
                raise KdlabError(f"{where}: rating {fields[2].strip()[:30]!r} is not a number") from None
    return users[keep], items[keep]


@DATASETS.register(
    "interactions",
    "implicit feedback from a local u.data / ratings.dat / CSV (user, item[, rating][, timestamp]); k-core, per-user 8:1:1",
    "Harper & Konstan 2015, doi:10.1145/2827872 (MovieLens)",
)
def interactions(
    seed: int = 0,
    path: str = "",
    k_core: int = 10,
    min_rating: Optional[float] = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> DataBundle:
    if not path:
        raise KdlabError("dataset 'interactions' needs data.params.path (a u.data, ratings.dat or CSV file)")
    users, items = parse_interactions(path, min_rating)
    return ranking_bundle(
        users, items, seed=seed, k_core_min=k_core, val_fraction=val_fraction,
        test_fraction=test_fraction, source=f"'{path}'",
    )
