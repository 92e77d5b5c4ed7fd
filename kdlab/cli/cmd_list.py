"""`kdlab list models|datasets|methods|pipelines` and `kdlab list layers MODEL`."""

from __future__ import annotations

from rich.table import Table

from kdlab.cli.common import console, positive_int
from kdlab.errors import KdlabError
from kdlab.registry import DATASETS, METHODS, MODELS, PIPELINES

KINDS = {"models": MODELS, "datasets": DATASETS, "methods": METHODS, "pipelines": PIPELINES}


def add_parsers(sub) -> None:
    p = sub.add_parser("list", help="list models, datasets, methods, pipelines, or a model's layers")
    p.add_argument("kind", choices=[*KINDS, "layers"])
    p.add_argument("model", nargs="?", help="with `layers`: the model whose module paths to print")
    p.add_argument("--input-shape", default="3,32,32", help="with `layers`: input shape, e.g. 3,32,32 or 64")
    p.add_argument("--num-classes", type=positive_int, default=10)
    p.set_defaults(func=cmd_list)


def cmd_list(args) -> int:
    if args.kind == "layers":
        return _layers(args)
    table = Table(show_header=True, box=None, pad_edge=False)
    table.add_column("name", style="bold")
    table.add_column("what it is")
    table.add_column("reference", style="dim")
    for e in KINDS[args.kind].entries():
        table.add_row(e.name, e.description, e.reference)
    console.print(table)
    return 0


def _layers(args) -> int:
    if not args.model:
        raise KdlabError("`kdlab list layers` needs a model name, e.g. `kdlab list layers resnet20`")
    try:
        shape = tuple(int(s) for s in args.input_shape.split(","))
    except ValueError:
        raise KdlabError(f"--input-shape must be comma-separated integers (got {args.input_shape!r})") from None
    builder = MODELS.get(args.model).obj
    try:
        model = builder(num_classes=args.num_classes, input_shape=shape)
    except (ValueError, RuntimeError, TypeError) as e:
        raise KdlabError(f"model '{args.model}' cannot be built for --input-shape {args.input_shape}: {e}") from None
    hints = set(getattr(model, "hint_points", []))
    for name, module in model.named_modules():
        if name:
            mark = "  \\[hint]" if name in hints else ""
            console.print(f"{name}  [dim]{type(module).__name__}[/dim]{mark}", highlight=False)
    return 0
