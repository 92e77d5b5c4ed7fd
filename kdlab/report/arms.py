"""A bar chart of an ablation: each row's final test metric (mean ± std over seeds), with a
reference row (e.g. the CE student) drawn as a line."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from kdlab.report.stats import mean_std


def arms_plot(results: dict[str, list[dict]], metric: str, path: str | Path, reference: Optional[str] = None,
              title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(results)
    stats = [mean_std([r.get(f"test_{metric}") for r in results[n]]) for n in names]
    fig, ax = plt.subplots(figsize=(6.4, 0.32 * len(names) + 1.2))
    y = range(len(names))
    ax.barh(list(y), [m for m, _ in stats], xerr=[s for _, s in stats], capsize=3, color="tab:blue", alpha=0.8)
    if reference in results:
        ax.axvline(stats[names.index(reference)][0], color="grey", lw=1, ls="--", label=reference)
        ax.legend(loc="upper right")
    lo = min(m - s for m, s in stats)
    ax.set_xlim(max(0.0, lo - 2), min(100.0, max(m + s for m, s in stats) + 1))
    ax.set_yticks(list(y))
    ax.set_yticklabels(names)
    ax.invert_yaxis()
    ax.set_xlabel(f"test {metric} (last epoch), mean ± std over seeds")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
