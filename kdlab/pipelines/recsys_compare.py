"""Recommender comparison: the default distill pipeline (teacher, then every variant's
student on every seed), reported as Recall@20, NDCG@20 (mean ± std over seeds, test split, at
the epoch with the best validation NDCG@20, i.e. early stopping) and the preference-inconsistency
rate (last epoch) of the methods with a projector."""

from __future__ import annotations

from dataclasses import dataclass

from kdlab.config.schema import Experiment
from kdlab.stages.context import RunContext
from kdlab.pipelines.distill import ExperimentResult, run_distill
from kdlab.registry import PIPELINES
from kdlab.report.stats import fmt, gain, mean_std
from kdlab.report.tables import markdown_table, rich_table

METRICS = ("recall20", "ndcg20")


@dataclass
class RecsysComparison:
    result: ExperimentResult
    baseline: str = "scratch"

    def rows(self) -> tuple[list[str], list[list[str]]]:
        header = ["model", "params", "seeds", "Recall@20", "NDCG@20", "NDCG@20 gain", "inconsistency"]
        base = self.result.results.get(self.baseline)
        rows = []
        for t in self.result.teachers:
            rows.append(["teacher", f"{t['params']:,}", "1", *(fmt(t.get(f"test_{m}", float("nan")), digits=4) for m in METRICS), "", ""])
        for name, runs in self.result.results.items():
            vals = {m: [r.get(f"best_test_{m}", r.get(f"test_{m}")) for r in runs] for m in METRICS}
            inc = [r["incons"] for r in runs if "incons" in r]
            g = "–"
            if base is not None and name != self.baseline:
                g = "{:+.4f} ± {:.4f}".format(*gain(vals["ndcg20"], [r.get("best_test_ndcg20", r.get("test_ndcg20")) for r in base]))
            rows.append([
                name, f"{runs[0].get('params', 0):,}", str(len(runs)),
                *(fmt(*mean_std(vals[m]), digits=4) for m in METRICS), g,
                fmt(*mean_std(inc), digits=3) if inc else "–",
            ])
        return header, rows

    def render(self):
        header, rows = self.rows()
        return rich_table(header, rows, title=f"{self.result.name} (test split, best-validation epoch)")

    def markdown(self) -> str:
        return markdown_table(*self.rows())


@PIPELINES.register(
    "recsys_compare",
    "ranking: teacher, scratch student and distilled students over seeds; Recall@20, NDCG@20, inconsistency rate",
)
def run_recsys_compare(exp: Experiment, ctx: RunContext) -> RecsysComparison:
    return RecsysComparison(run_distill(exp, ctx))
