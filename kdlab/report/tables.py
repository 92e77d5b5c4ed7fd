"""Comparison tables: one row per variant, mean ± std across seeds, as rich and Markdown."""

from __future__ import annotations

from typing import Optional

from rich.table import Table

from kdlab.report.stats import fmt, gain, mean_std


def comparison_rows(
    results: dict[str, list[dict]], metric: str = "top1", baseline: Optional[str] = "ce", label: str = "variant"
) -> tuple[list[str], list[list[str]]]:
    """results: variant -> per-seed summaries (with test_<metric> and best_test_<metric>)."""
    # Which weights each accuracy is of: the last epoch's, or those of the best validation epoch.
    header = [label, "params", "seeds", f"test {metric} (last epoch)", f"test {metric} (best-val epoch)"]
    base = results.get(baseline) if baseline else None
    if base is not None:
        header.append(f"gain over {baseline} (last epoch)")
    rows = []
    for name, runs in results.items():
        last = [r.get(f"test_{metric}") for r in runs]
        best = [r.get(f"best_test_{metric}", r.get(f"test_{metric}")) for r in runs]
        params = runs[0].get("params") if runs else None
        row = [name, f"{params:,}" if params else "–", str(len(runs)), fmt(*mean_std(last)), fmt(*mean_std(best))]
        if base is not None:
            row.append("–" if name == baseline else "{:+.2f} ± {:.2f}".format(*gain(last, [r.get(f"test_{metric}") for r in base])))
        rows.append(row)
    return header, rows


def rich_table(header: list[str], rows: list[list[str]], title: str = "") -> Table:
    table = Table(title=title or None)
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*r)
    return table


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
