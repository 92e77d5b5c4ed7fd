"""Recommender comparison: the default distill pipeline (teacher, then every variant's
student on every seed), reported as Recall@20, NDCG@20 (mean ± std over seeds, test split, at
the epoch with the best validation NDCG@20, i.e. early stopping), with a most-popular row (the
non-personalised ranking by training counts, same test protocol) as the floor a teacher must
clear to have something to teach, and the preference-inconsistency rates (last epoch) of the
methods with a projector: over uniform item pairs and over pairs from the teacher's top items."""

from __future__ import annotations

from dataclasses import dataclass, field

from kdlab.config.schema import Experiment
from kdlab.engine.evaluation import evaluate
from kdlab.models.recsys_popular import most_popular
from kdlab.pipelines.distill import ExperimentResult, run_distill
from kdlab.registry import PIPELINES
from kdlab.report.stats import fmt, gain, mean_std
from kdlab.report.tables import markdown_table, rich_table
from kdlab.stages.building import load_data
from kdlab.stages.context import RunContext
from kdlab.tasks.base import get_task

METRICS = ("recall20", "ndcg20")
INCONSISTENCY = (("incons", "inconsistency (uniform pairs)"), ("incons_top", "inconsistency (teacher top-M pairs)"))


@dataclass
class RecsysComparison:
    result: ExperimentResult
    baseline: str = "scratch"
    popular: dict = field(default_factory=dict)  # test metrics of the most-popular ranking

    def rows(self) -> tuple[list[str], list[list[str]]]:
        header = ["model", "params", "seeds", "Recall@20", "NDCG@20", "NDCG@20 gain", *(h for _, h in INCONSISTENCY)]
        base = self.result.results.get(self.baseline)
        blank = ["", ""]
        rows = []
        if self.popular:
            rows.append(["most-popular", "0", "–", *(fmt(self.popular.get(f"test_{m}", float("nan")), digits=4) for m in METRICS), "", *blank])
        for t in self.result.teachers:
            rows.append(["teacher", f"{t['params']:,}", "1", *(fmt(t.get(f"test_{m}", float("nan")), digits=4) for m in METRICS), "", *blank])
        for name, runs in self.result.results.items():
            vals = {m: [r.get(f"best_test_{m}", r.get(f"test_{m}")) for r in runs] for m in METRICS}
            g = "–"
            if base is not None and name != self.baseline:
                g = "{:+.4f} ± {:.4f}".format(*gain(vals["ndcg20"], [r.get("best_test_ndcg20", r.get("test_ndcg20")) for r in base]))
            incs = []
            for key, _ in INCONSISTENCY:
                inc = [r[key] for r in runs if key in r]
                incs.append(fmt(*mean_std(inc), digits=3) if inc else "–")
            rows.append([
                name, f"{runs[0].get('params', 0):,}", str(len(runs)),
                *(fmt(*mean_std(vals[m]), digits=4) for m in METRICS), g, *incs,
            ])
        return header, rows

    def render(self):
        header, rows = self.rows()
        return rich_table(header, rows, title=f"{self.result.name} (test split, best-validation epoch)")

    def markdown(self) -> str:
        return markdown_table(*self.rows())


def popular_metrics(exp: Experiment, device) -> dict:
    """Test metrics of ranking every user's unseen items by their training popularity."""
    data = load_data(exp.data).to(device)
    task = get_task(data)
    ev = evaluate(most_popular(data), data.test, task, data.prepare, exp.data.eval_batch_size)
    return {f"test_{k}": v for k, v in ev.items()}


@PIPELINES.register(
    "recsys_compare",
    "ranking: most-popular, teacher, scratch and distilled students over seeds; Recall@20, NDCG@20, inconsistency rates",
)
def run_recsys_compare(exp: Experiment, ctx: RunContext) -> RecsysComparison:
    result = run_distill(exp, ctx)
    return RecsysComparison(result, popular=popular_metrics(exp, ctx.device))
