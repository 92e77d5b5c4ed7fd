"""`kdlab demo`: the quickstart. Trains (or reuses) a teacher, then CE and KD students with
identical budgets over three seeds, and prints what distillation gained."""

from __future__ import annotations

from importlib import resources

from kdlab.cli.common import add_run_options, main_print
from kdlab.config.load import read_config, validate, with_overrides
from kdlab.report.stats import fmt, gain, mean_std
from kdlab.report.tables import rich_table


def demo_config_path() -> str:
    return str(resources.files("kdlab") / "configs" / "demo.yaml")


def add_parsers(sub) -> None:
    p = sub.add_parser("demo", help="quickstart: teacher -> CE and KD students on built-in data, 3 seeds")
    p.add_argument("overrides", nargs="*", help="overrides of the demo config, e.g. seeds=[0]")
    add_run_options(p)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from kdlab.stages.runner import run_experiment

    path = demo_config_path()
    exp = validate(with_overrides(read_config(path), args.overrides), "demo config")
    main_print(
        f"kdlab demo: teacher {exp.teacher.model.source} -> student {exp.student.source} on '{exp.data.name}', "
        f"{exp.train.epochs} epochs, seeds {exp.seeds} (config: {path})"
    )
    res = run_experiment(exp, device=args.device, store=args.store, progress=not args.quiet)
    main_print(demo_table(res))
    return 0


def demo_table(res):
    metric = res.metric
    header = ["model", "parameters", f"test {metric} (mean ± std)", "KD gain over CE"]
    rows = []
    for i, t in enumerate(res.teachers):
        rows.append(["teacher", f"{t['params']:,}", fmt(t[f"test_{metric}"]), ""])
    ce = [r[f"test_{metric}"] for r in res.results.get("ce", [])]
    for name, runs in res.results.items():
        vals = [r[f"test_{metric}"] for r in runs]
        g = "" if name == "ce" or not ce else "{:+.2f} ± {:.2f}".format(*gain(vals, ce))
        rows.append([f"student ({name})", f"{runs[0]['params']:,}", fmt(*mean_std(vals)) + f"  (n={len(vals)})", g])
    return rich_table(header, rows, title=f"{res.name}: test accuracy, gain ± standard error over seeds")
