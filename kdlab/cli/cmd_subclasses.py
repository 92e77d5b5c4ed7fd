"""`kdlab subclasses RUN`: which natural subclasses each learned subclass of a stored
subclass-head model captures (learned subclass × fine label counts)."""

from __future__ import annotations

from kdlab.cli.common import console
from kdlab.errors import KdlabError


def add_parsers(sub) -> None:
    p = sub.add_parser("subclasses", help="table of a subclass-head run's learned subclasses × the data's fine labels")
    p.add_argument("run", help="run id (or unique prefix) of a model with a subclass head")
    p.add_argument("--split", choices=["train", "val", "test"], default="test")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--store", default=None)
    p.set_defaults(func=cmd_subclasses)


def cmd_subclasses(args) -> int:
    from pathlib import Path

    import yaml

    from kdlab.cli.cmd_runs import resolve_ids
    from kdlab.config.schema import DataSpec, ModelSpec
    from kdlab.engine.checkpoint import load_model_state, read_checkpoint
    from kdlab.models.build import build_model
    from kdlab.stages.building import load_data
    from kdlab.report.subclasses import counts_rows, purity, subclass_counts
    from kdlab.report.tables import rich_table
    from kdlab.store.runstore import RunStore

    store = RunStore(args.store)
    row = resolve_ids(store, [args.run])[0]
    path = Path(row["path"])
    config = yaml.safe_load((path / "config.yaml").read_text())
    ck_path = path / "checkpoints" / f"{args.checkpoint}.pt"
    ck = read_checkpoint(ck_path)
    arch = ck.get("arch") or {}
    if arch.get("model") != "subclass":
        raise KdlabError(f"run {row['id']} trained model '{arch.get('model')}', not a subclass head (`model: {{name: subclass, ...}}`)")
    data = load_data(DataSpec(**config["data"]))
    model = build_model(ModelSpec(name="subclass", params=arch["params"], num_classes=arch.get("num_classes")), data)
    load_model_state(model, ck["model"], ck_path, "model")
    split = getattr(data, args.split)
    counts = subclass_counts(model, split, data.prepare)
    header, rows = counts_rows(counts, model.subclasses, data.meta.get("fine_names"))
    console.print(rich_table(header, rows, title=f"{row['id']}: learned subclass × fine label ({args.split} split, "
                                                 f"{args.checkpoint} weights); purity {purity(counts):.1f}%"))
    return 0
