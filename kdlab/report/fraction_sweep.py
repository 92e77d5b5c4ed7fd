"""A comparison repeated at several fractions of the student's training data: one table row per
fraction (each arm's mean ± std, and its gain over the baseline), and the gain plotted against
the fraction."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from kdlab.report.stats import fmt, gain, mean_std


def _values(runs: list[dict], metric: str) -> list[float]:
    return [r.get(f"test_{metric}") for r in runs]


def arms(points: Sequence[dict]) -> tuple[str, list[str]]:
    """The baseline and the other student arms of the sweep (the teacher is shown apart)."""
    result = points[0]["result"]
    return result.baseline, [v for v in result.results if v not in ("teacher", result.baseline)]


def sweep_rows(points: Sequence[dict], metric: str) -> tuple[list[str], list[list[str]]]:
    """points: {fraction, train, epochs, steps, result} with result.results (arm -> per-seed rows)."""
    base, others = arms(points)
    names = [v for v in points[0]["result"].results]
    header = ["student data", "examples", "epochs", "steps", *names, *(f"{v} − {base}" for v in others if base)]
    rows = []
    for p in points:
        res = p["result"].results
        row = [f"{100 * p['fraction']:g}%", str(p["train"]), str(p["epochs"]), f"{p['steps']:,}"]
        row += [fmt(*mean_std(_values(res[v], metric))) for v in names]
        if base:
            row += ["{:+.2f} ± {:.2f}".format(*gain(_values(res[v], metric), _values(res[base], metric))) for v in others]
        rows.append(row)
    return header, rows


def gain_plot(points: Sequence[dict], metric: str, path: str | Path, title: str = "") -> Path:
    """Each arm's gain over the baseline against the student's data fraction (log scale), with
    error bars of ± one standard error of the difference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base, others = arms(points)
    fractions = [100 * p["fraction"] for p in points]
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    for v in others:
        g = [gain(_values(p["result"].results[v], metric), _values(p["result"].results[base], metric)) for p in points]
        ax.errorbar(fractions, [m for m, _ in g], yerr=[s for _, s in g], marker="o", capsize=3, label=f"{v} − {base}")
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xticks(fractions)
    ax.set_xticklabels([f"{f:g}%" for f in fractions])
    ax.set_xlabel("student's share of the training split")
    ax.set_ylabel(f"test {metric} gain over {base} (points)")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
