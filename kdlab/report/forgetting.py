"""The forgetting plot of education distillation: held-out accuracy on each class group,
epoch by epoch (mean over seeds, band = ±1 std), with the grade boundaries marked."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np


def forgetting_plot(histories: Sequence[list[dict]], groups: int, starts: Sequence[int], path: str | Path,
                    title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    epochs = len(histories[0])
    x = np.arange(1, epochs + 1)
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for k in range(groups):
        key = f"test_group{k + 1}"
        vals = np.array([[h.get(key, np.nan) for h in hist] for hist in histories], dtype=float)
        if np.all(np.isnan(vals)):
            continue
        with warnings.catch_warnings():  # epochs before the group's grade are all-NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            m = np.nanmean(vals, 0)
            s = np.nanstd(vals, 0)
        (line,) = ax.plot(x, m, label=f"group {k + 1}")
        ax.fill_between(x, m - s, m + s, color=line.get_color(), alpha=0.2, linewidth=0)
    for g, s in enumerate(starts[1:], start=2):
        ax.axvline(s + 0.5, color="grey", linestyle="--", linewidth=0.8)
        ax.text(s + 0.7, 2, f"grade {g}", color="grey", fontsize=8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy on the group (%)")
    ax.set_ylim(0, 101)
    ax.set_title(title or "education distillation: accuracy per class group")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
