"""Mean ± std over seeds, and the gain of one variant over another with its uncertainty."""

from __future__ import annotations

import math
from typing import Optional, Sequence


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return float("nan"), float("nan")
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def gain(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Mean(a) - mean(b) and the standard error of that difference."""
    ma, sa = mean_std(a)
    mb, sb = mean_std(b)
    se = math.sqrt(sa**2 / max(len(a), 1) + sb**2 / max(len(b), 1))
    return ma - mb, se


def fmt(m: float, s: Optional[float] = None, digits: int = 2) -> str:
    if m != m:  # nan
        return "–"
    return f"{m:.{digits}f}" if s is None else f"{m:.{digits}f} ± {s:.{digits}f}"
