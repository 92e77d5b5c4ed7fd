"""`kdlab run FILE key=value ...` and `kdlab validate FILE`."""

from __future__ import annotations

from kdlab.cli.common import add_log_option, add_run_options, console, log_overrides, positive_int
from kdlab.config.load import load_config
from kdlab.config.paths import check_inputs_exist


def add_parsers(sub) -> None:
    p = sub.add_parser("run", help="run an experiment from a YAML file")
    p.add_argument("config", help="experiment YAML")
    p.add_argument("overrides", nargs="*", help="overrides such as train.epochs=5 methods.1.tau=2")
    p.add_argument("--resume", action="store_true", help="continue the interrupted runs of this config")
    p.add_argument(
        "--stop-after-epoch", type=positive_int, default=None, metavar="N",
        help="stop every run after epoch N (time-boxing); --resume continues",
    )
    add_log_option(p)
    add_run_options(p)
    p.set_defaults(func=cmd_run)

    v = sub.add_parser("validate", help="check an experiment YAML without running it")
    v.add_argument("config")
    v.add_argument("overrides", nargs="*")
    v.set_defaults(func=cmd_validate)


def cmd_validate(args) -> int:
    exp = load_config(args.config, args.overrides)
    check_inputs_exist(exp.model_dump(mode="json"), args.config)
    teachers = ", ".join(t.model.source for t in exp.all_teachers()) or "none"
    sets = exp.method_sets()
    methods = "; ".join(f"{k}: " + " + ".join(f"{m.weight:g}·{m.name}" for m in v) for k, v in sets.items())
    console.print(f"[green]ok[/green] {args.config}: data {exp.data.name}, teacher {teachers}, student {exp.student.source}, "
                  f"{exp.train.epochs} epochs × {len(exp.seeds)} seed(s); methods {methods}")
    return 0


def cmd_run(args) -> int:
    from kdlab.cli.results import print_result
    from kdlab.stages.runner import run_experiment

    exp = load_config(args.config, [*args.overrides, *log_overrides(args)])
    check_inputs_exist(exp.model_dump(mode="json"), args.config)
    result = run_experiment(
        exp, device=args.device, store=args.store, resume=args.resume,
        stop_after_epoch=args.stop_after_epoch, progress=not args.quiet,
    )
    print_result(result)
    return 0
