"""`kdlab tune FILE --trials N [--resume]`: search the config's `tune:` section with Optuna."""

from __future__ import annotations

from kdlab.cli.common import add_log_option, add_run_options, console, log_overrides
from kdlab.config.load import load_config


def add_parsers(sub) -> None:
    p = sub.add_parser("tune", help="search hyper-parameters declared in a config's `tune:` section (Optuna)")
    p.add_argument("config", help="experiment YAML with a `tune:` section")
    p.add_argument("overrides", nargs="*", help="overrides such as train.epochs=5")
    p.add_argument("--trials", type=int, required=True, metavar="N", help="trials in the study, counting finished ones")
    p.add_argument("--resume", action="store_true", help="continue the study (after a kill or with more --trials)")
    p.add_argument("--top", type=int, default=5, help="trials shown in the final table")
    add_log_option(p)
    add_run_options(p)
    p.set_defaults(func=cmd_tune)


def cmd_tune(args) -> int:
    import os

    from kdlab.errors import KdlabError
    from kdlab.store.runstore import RunStore
    from kdlab.tune.plan import make_plan
    from kdlab.tune.report import best_table, plot_params, ranked, write_best_config
    from kdlab.tune.study import run_study, study_path

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise KdlabError("kdlab tune runs in one process: start it without torchrun")
    if args.trials < 1:
        raise KdlabError(f"--trials must be at least 1 (got {args.trials})")
    exp = load_config(args.config, [*args.overrides, *log_overrides(args)])
    if args.device:
        exp = exp.model_copy(update={"device": args.device})
    plan = make_plan(exp)
    store = RunStore(args.store)
    try:
        study = run_study(plan, store, args.trials, args.resume, progress=not args.quiet, say=console.print)
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted[/yellow]: `kdlab tune {args.config} --trials {args.trials} --resume` "
                      "continues the study without repeating finished trials")
        return 130
    console.print(best_table(study, plan, args.top))
    if not ranked(study, plan):
        console.print("no trial completed: nothing to plot or write")
        return 1
    db = study_path(store, plan.study)
    png = plot_params(study, plan, db.with_suffix(".png"))
    best = write_best_config(study, plan, db.with_name(f"{plan.study}-best.yaml"))
    console.print(f"plot: {png}\nbest config: {best}  (kdlab run {best})")
    return 0
