"""Entry point: parse, dispatch, and turn user errors into one or two lines with exit code 2."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import warnings

from kdlab.errors import KdlabError


def build_parser() -> argparse.ArgumentParser:
    from kdlab.cli.common import Parser

    parser = Parser(prog="kdlab", description="kdlab: a knowledge-distillation lab for PyTorch")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    import kdlab.cli as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("cmd_"):
            importlib.import_module(f"kdlab.cli.{info.name}").add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    # Overrides (key=value) may stand anywhere among the options.
    try:  # argparse exits on a bad option (code 2) or --help (0): return that code instead
        args, extra = parser.parse_known_args(argv)
        if extra:
            if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
                args.overrides = [*args.overrides, *extra]
            else:
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    debug = args.debug or getattr(args, "sub_debug", False)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from kdlab.engine import distributed as D
    from kdlab.stages.stage import RunStopped

    warnings.filterwarnings("ignore", message=".*TypedStorage.*")
    try:
        code = args.func(args) or 0
    except KdlabError as e:
        if debug:
            raise
        print(f"kdlab: error: {e}", file=sys.stderr)
        code = 2
    except RunStopped as e:
        print(f"kdlab: {e}", file=sys.stderr)
        code = 0
    except KeyboardInterrupt:
        print("kdlab: interrupted; the last checkpoint is kept; `kdlab run … --resume` continues", file=sys.stderr)
        code = 130
    except Exception as e:  # a bug, not a user error: say so, keep it to one line unless --debug
        if debug:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"kdlab: internal error: {type(e).__name__}: {msg} (rerun with --debug for the traceback)", file=sys.stderr)
        code = 1
    finally:
        D.shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
