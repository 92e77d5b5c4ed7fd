"""`kdlab diagnose [CONFIG]`: which knowledge does the teacher give the student? Trains the
ladder CE, LS, KD-pt, KD-sim, KD-pt+sim, KD over the config's seeds and writes a report."""

from __future__ import annotations

import os
from importlib import resources

from kdlab.cli.common import add_run_options, main_print
from kdlab.config.load import read_config, validate, with_overrides
from kdlab.config.paths import check_inputs_exist


def builtin_config_path() -> str:
    return str(resources.files("kdlab") / "configs" / "diagnose_hierarchy.yaml")


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "diagnose",
        help="train the KD ablation ladder and report which knowledge the teacher provides (built-in case without CONFIG)",
    )
    p.add_argument("config", nargs="?", default=None, help="experiment YAML with data, teacher and student (default: built-in hierarchy case)")
    p.add_argument("overrides", nargs="*", help="overrides such as seeds=[0,1,2] pipeline.tau=2 train.epochs=20")
    p.add_argument("--out", default=None, metavar="DIR", help="report directory (default <store>/reports/<name>-<time>)")
    add_run_options(p)
    p.set_defaults(func=cmd_diagnose)


def cmd_diagnose(args) -> int:
    from kdlab.stages.runner import run_experiment

    config, overrides = args.config, list(args.overrides)
    # `kdlab diagnose seeds=[0]`: an override in the CONFIG position means the built-in case.
    if config is not None and "=" in config and not config.endswith((".yaml", ".yml")):
        config, overrides = None, [config, *overrides]
    path = config or builtin_config_path()
    raw = read_config(path)
    pipe = raw.get("pipeline") or {}
    if not isinstance(pipe, dict) or pipe.get("name", "diagnose") != "diagnose":
        pipe = {}  # the config's own pipeline is replaced: diagnose defines the stages
    raw["pipeline"] = {**pipe, "name": "diagnose"}
    raw = with_overrides(raw, overrides)
    if args.out:
        raw["pipeline"]["report_dir"] = os.path.abspath(args.out)
    exp = validate(raw, path)
    check_inputs_exist(exp.model_dump(mode="json"), path)
    main_print(f"kdlab diagnose: teacher {exp.teacher.model.source if exp.teacher else '?'} -> student {exp.student.source} "
               f"on '{exp.data.name}', {exp.train.epochs} epochs × {len(exp.seeds)} seeds × 6 rungs (config: {path})")
    res = run_experiment(exp, device=args.device, store=args.store, progress=not args.quiet)
    main_print(res.render())
    return 0
