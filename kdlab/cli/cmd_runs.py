"""`kdlab runs` (the store as a table) and `kdlab compare RUN...` (mean ± std per config)."""

from __future__ import annotations

from collections import OrderedDict

from rich.table import Table

from kdlab.cli.common import console, positive_int
from kdlab.report.stats import fmt, mean_std
from kdlab.store import tensorcache
from kdlab.store.runstore import RunStore


def add_parsers(sub) -> None:
    p = sub.add_parser("runs", help="list the runs in the store")
    p.add_argument("--store", default=None)
    p.add_argument("--limit", type=positive_int, default=50)
    p.add_argument("--caches", action="store_true", help="list the teacher-output caches instead, with their sizes")
    p.set_defaults(func=cmd_runs)

    c = sub.add_parser("compare", help="final and best metrics of runs side by side, mean ± std over seeds")
    c.add_argument("runs", nargs="+", help="run ids (or unique prefixes)")
    c.add_argument("--store", default=None)
    c.set_defaults(func=cmd_compare)


def _metric_keys(rows) -> list[str]:
    keys = []
    for r in rows:
        for k in r["summary"]:
            if (k.startswith("test_") or k.startswith("best_test_")) and k not in keys:
                keys.append(k)
    return keys


def cmd_caches(store: RunStore) -> int:
    caches = list(tensorcache.list_caches(store.root / "cache"))
    if not caches:
        console.print(f"no teacher-output caches in {store.root / 'cache'}")
        return 0
    table = Table(title=f"teacher-output caches in {store.root / 'cache'}")
    for col in ("key", "teacher", "rows", "views", "fields", "dtype", "size", "status"):
        table.add_column(col, overflow="fold", no_wrap=col in ("size", "status", "rows", "views"))
    for path, m, complete in caches:
        made = m["made_from"]
        table.add_row(path.name, m.get("teacher", ""), str(m["rows"]), str(m.get("views", 0)),
                      ", ".join(m["fields"]), made.get("dtype", "") + (f" top-{made['topk']}" if made.get("topk") else "")
                      + (f" sampled-{made['sampled']}" if made.get("sampled") else ""),
                      tensorcache.human_size(tensorcache.size_bytes(path)), "complete" if complete else "partial")
    console.print(table)
    return 0


def cmd_runs(args) -> int:
    store = RunStore(args.store)
    if args.caches:
        return cmd_caches(store)
    rows = store.rows(limit=args.limit)
    if not rows:
        console.print(f"no runs in {store.root}")
        return 0
    table = Table(title=f"runs in {store.root}", caption="last / best-val: the test score at the last and at the "
                  "best-validation epoch")
    # The id holds creation time, config, variant, kind and seed (`ss0`: student seed 0);
    # `kdlab compare` takes unique id prefixes.
    table.add_column("id", overflow="fold", min_width=20)
    for col in ("status", "epochs", "metric", "last", "best-val"):
        table.add_column(col, no_wrap=True)
    for r in rows:
        s, metric = r["summary"], r["metric"] or ""  # the task's primary metric, stored with the run
        table.add_row(
            r["id"], r["status"], str(s.get("epochs", "")), metric,
            fmt(s[f"test_{metric}"]) if f"test_{metric}" in s else "",
            fmt(r["score"]) if r["score"] is not None else "",
        )
    console.print(table)
    return 0


def resolve_ids(store: RunStore, given: list[str]) -> list[dict]:
    return [store.resolve(g) for g in given]


def cmd_compare(args) -> int:
    store = RunStore(args.store)
    rows = resolve_ids(store, args.runs)
    groups: "OrderedDict[str, list[dict]]" = OrderedDict()
    for r in rows:
        groups.setdefault(r["grp"], []).append(r)
    # One column per config (its seeds averaged), one row per metric: side by side.
    table = Table(title="compare: mean ± std over the seeds of each config")
    table.add_column("metric", no_wrap=True)
    for i, rs in enumerate(groups.values()):
        first = rs[0]
        variant = f" \\[{first['variant']}]" if first["variant"] and first["variant"] != "main" else ""
        table.add_column(f"{first['name']}{variant}\n{first['kind']}, seeds {','.join(str(r['seed']) for r in rs)}",
                         justify="right")
    for k in _metric_keys(rows):
        cells = [fmt(*mean_std([r["summary"].get(k) for r in rs if k in r["summary"]])) for rs in groups.values()]
        table.add_row(k, *cells)
    console.print(table)
    for i, rs in enumerate(groups.values()):
        console.print(f"[dim]config {i + 1}: {', '.join(r['id'] for r in rs)}[/dim]", highlight=False)
    return 0
