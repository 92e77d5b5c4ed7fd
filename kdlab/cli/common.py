"""Options and helpers shared by subcommands."""

from __future__ import annotations

import argparse

from rich.console import Console

from kdlab.config.schema import check_device
from kdlab.engine import distributed as D

console = Console()


class Parser(argparse.ArgumentParser):
    """argparse with a two-line error (the wrapped usage of a subcommand can fill a screen)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n(`{self.prog} --help` shows the usage)\n")


def device_arg(value: str) -> str:
    """argparse type for --device: auto, cpu, cuda or cuda:N."""
    try:
        return check_device(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def positive_int(value: str) -> int:
    """argparse type for counts that must be at least 1."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more (got {n})")
    return n


def add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, type=device_arg, help="auto (CUDA if present, else CPU), cpu, cuda or cuda:N")
    p.add_argument("--store", default=None, help="run store directory (default ./runs or $KDLAB_HOME)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", dest="sub_debug", action="store_true", help="show tracebacks for errors")


def add_log_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log", default=None, metavar="BACKENDS",
                   help="mirror every run to trackers, e.g. tensorboard,mlflow (sets logging.backends)")


def log_overrides(args) -> list[str]:
    """`--log a,b` is the override `logging.backends=[a,b]`, validated with the config."""
    if not args.log:
        return []
    names = [n.strip() for n in args.log.split(",") if n.strip()]
    return [f"logging.backends=[{','.join(names)}]"]


def main_print(*objs) -> None:
    """Print on the main DDP rank only."""
    if D.current().main:
        console.print(*objs)
