"""What a study found: a table of the best trials, the metric against each parameter (PNG),
and the best trial's config as a YAML file `kdlab run` accepts."""

from __future__ import annotations

from pathlib import Path

import yaml

from kdlab.report.stats import fmt, mean_std
from kdlab.report.tables import rich_table
from kdlab.tune.plan import Plan


def _complete(study):
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]


def ranked(study, plan: Plan) -> list:
    return sorted(_complete(study), key=lambda t: t.value, reverse=plan.direction == "maximize")


def _show(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def best_table(study, plan: Plan, top: int = 5):
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    header = ["trial", *plan.spec.params, f"{plan.metric} (mean ± std)", f"{plan.test_key} (mean ± std)", "seeds"]
    rows = []
    for t in ranked(study, plan)[:top]:
        test = [v for v in t.user_attrs.get("test", []) if v is not None]
        rows.append([str(t.number), *(_show(t.params.get(p)) for p in plan.spec.params),
                     fmt(*mean_std(t.user_attrs["values"])), fmt(*mean_std(test)), str(len(t.user_attrs["values"]))])
    title = (f"study {plan.study}: best {len(rows)} of {counts[TrialState.COMPLETE]} complete trials "
             f"({counts[TrialState.PRUNED]} pruned, {counts[TrialState.FAIL]} failed or interrupted)")
    return rich_table(header, rows, title=title)


def plot_params(study, plan: Plan, path: Path) -> Path:
    """One panel per parameter: complete trials as mean ± std over seeds, pruned ones where they stopped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState

    names = list(plan.spec.params)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False)
    trials = study.get_trials(deepcopy=False)
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    best = ranked(study, plan)[:1]
    for ax, name in zip(axes[0], names):
        rng = plan.spec.params[name]
        pos = (lambda v: rng.choices.index(v)) if rng.choices is not None else (lambda v: v)
        for t in _complete(study):
            m, s = mean_std(t.user_attrs["values"])
            ax.errorbar(pos(t.params[name]), m, yerr=s, fmt="o", color="C0", capsize=3)
        for t in pruned:
            last = t.intermediate_values[max(t.intermediate_values)]
            ax.plot(pos(t.params[name]), last, "x", color="0.6")
        for t in best:
            ax.plot(pos(t.params[name]), t.value, "*", color="C3", markersize=14)
        if rng.choices is not None:
            ax.set_xticks(range(len(rng.choices)), [str(c) for c in rng.choices])
        elif rng.log:
            from matplotlib.ticker import NullFormatter, ScalarFormatter

            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())  # 2×10⁰, 3×10⁰ ... overlap
        ax.set_xlabel(name)
        ax.set_ylabel(plan.metric)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{plan.study}: o complete (mean ± std over seeds), x pruned (value when stopped), * best",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_best_config(study, plan: Plan, path: Path) -> Path:
    t = ranked(study, plan)[0]
    cfg = plan.config(f"{plan.study}-best", {p: t.params[p] for p in plan.spec.params})
    m, s = mean_std(t.user_attrs["values"])
    head = (f"# Best trial {t.number} of study '{plan.study}' (kdlab tune): {plan.metric} {fmt(m, s)} over seeds "
            f"{plan.seeds}.\n# Parameters: " + ", ".join(f"{p}={_show(t.params[p])}" for p in plan.spec.params)
            + "\n# `kdlab run` this file to train it again (same seeds: same numbers on CPU).\n")
    path.write_text(head + yaml.safe_dump(cfg, sort_keys=False))
    return path
