"""`kdlab cache-teacher FILE key=value ...`: run the teachers once over the training data and
store their outputs (top-k, sampled or full logits) for `kdlab run` of the same config."""

from __future__ import annotations

from kdlab.cli.common import add_run_options, console
from kdlab.config.load import load_config
from kdlab.config.paths import check_inputs_exist


def add_parsers(sub) -> None:
    p = sub.add_parser("cache-teacher", help="run the teacher once over the training data and store its outputs "
                                             "(teacher.cache: topk, sampled or full) for later runs")
    p.add_argument("config", help="experiment YAML with `cache:` under its teacher")
    p.add_argument("overrides", nargs="*", help="overrides such as teacher.cache.topk=32")
    add_run_options(p)
    p.set_defaults(func=cmd_cache_teacher)


def cmd_cache_teacher(args) -> int:
    from kdlab.engine import distributed as D
    from kdlab.report.progress import Reporter
    from kdlab.stages.cache_teacher import cache_teachers
    from kdlab.stages.context import RunContext, resolve_device
    from kdlab.store.runstore import RunStore
    from kdlab.store.tensorcache import human_size

    exp = load_config(args.config, args.overrides)
    check_inputs_exist(exp.model_dump(mode="json"), args.config)
    device = resolve_device(args.device or exp.device)
    with Reporter(enabled=not args.quiet and D.current().main) as reporter:
        reports = cache_teachers(exp, RunContext(RunStore(args.store), device, reporter))
    for r in reports:
        what = {"full": "full logits", "topk": f"top-{r.k} logits + tail mass", "sampled": f"{r.k} sampled ids + entropy"}
        console.print(f"teacher {r.teacher}: {what[r.mode]} of {r.tokens:,} tokens ({r.rows:,} rows) in {r.path}: "
                      f"{human_size(r.bytes)}, {r.bytes_per_million_tokens / 2**20:.1f} MiB per million tokens",
                      highlight=False, soft_wrap=True)
    return 0
