"""`kdlab list models|datasets|methods|pipelines` and `kdlab list layers MODEL` (or --import,
--hf, --config)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import yaml
from pydantic import ValidationError
from rich.table import Table

from kdlab.cli.common import console, positive_int
from kdlab.config.load import format_validation_error, load_config
from kdlab.config.schema import ModelSpec
from kdlab.errors import KdlabError
from kdlab.models.build import build_model
from kdlab.registry import DATASETS, METHODS, MODELS, PIPELINES

KINDS = {"models": MODELS, "datasets": DATASETS, "methods": METHODS, "pipelines": PIPELINES}


def add_parsers(sub) -> None:
    p = sub.add_parser("list", help="list models, datasets, methods, pipelines, or a model's layers")
    p.add_argument("kind", choices=[*KINDS, "layers"])
    p.add_argument("model", nargs="?", help="with `layers`: the zoo model whose module paths to print")
    p.add_argument("--import", dest="import_", metavar="MODULE:CALLABLE",
                   help="with `layers`: a model built by your callable (arguments in --params)")
    p.add_argument("--params", default="{}", help="with `layers` and --import: the callable's arguments as YAML/JSON")
    p.add_argument("--hf", metavar="DIR", help="with `layers`: a Hugging Face model folder")
    p.add_argument("--hf-kind", default="auto", help="with --hf: the head to load (default: the folder's config says)")
    p.add_argument("--config", help="with `layers`: the student of this experiment (--teacher N: its teacher N)")
    p.add_argument("--teacher", type=int, metavar="N", help="with --config: teacher N (0 for `teacher:`) instead")
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
    model = _config_model(args) if args.config else _named_model(args)
    hints = set(getattr(model, "hint_points", []))
    for name, module in model.named_modules():
        if name:
            mark = "  \\[hint]" if name in hints else ""
            console.print(f"{name}  [dim]{type(module).__name__}[/dim]{mark}", highlight=False)
    return 0


def _named_model(args):
    """A zoo model by name, or one from --import / --hf, for the given input shape and classes."""
    sources = [s for s in (args.model, args.import_, args.hf) if s]
    if len(sources) != 1:
        raise KdlabError("`kdlab list layers` needs one model: a zoo name (e.g. `kdlab list layers resnet20`), "
                         "--import MODULE:CALLABLE, --hf DIR or --config EXPERIMENT.yaml")
    try:
        shape = tuple(int(s) for s in args.input_shape.split(","))
    except ValueError:
        raise KdlabError(f"--input-shape must be comma-separated integers (got {args.input_shape!r})") from None
    try:
        params = yaml.safe_load(args.params) or {}
    except yaml.YAMLError:
        params = None
    if not isinstance(params, dict):
        raise KdlabError(f"--params must be a mapping, e.g. '{{width: 64}}' (got {args.params!r})")
    raw = ({"name": args.model} if args.model else {"import": args.import_, "params": params} if args.import_
           else {"hf": {"path": os.path.abspath(args.hf), "kind": args.hf_kind}})
    try:
        spec = ModelSpec(**raw)
    except ValidationError as e:
        raise KdlabError(format_validation_error(e, "list layers")) from None
    # No data here: the model is built for --num-classes and --input-shape (an hf model as its config says).
    data = SimpleNamespace(num_classes=args.num_classes, input_shape=shape, model_args={}, task=None)
    try:
        return build_model(spec, data)
    except (ValueError, RuntimeError, TypeError) as e:
        raise KdlabError(f"model '{spec.source}' cannot be built for --input-shape {args.input_shape}: {e}") from None


def _config_model(args):
    """The student (or teacher N) of an experiment, built for its data."""
    from kdlab.stages.building import load_data

    exp = load_config(args.config)
    if args.teacher is None:
        return build_model(exp.student, load_data(exp.data), "student")
    teachers = exp.all_teachers()
    if not 0 <= args.teacher < len(teachers):
        raise KdlabError(f"--teacher {args.teacher}: '{args.config}' has {len(teachers)} teacher(s)")
    spec = teachers[args.teacher]
    return build_model(spec.model, load_data(spec.data or exp.data), f"teacher {args.teacher}")
