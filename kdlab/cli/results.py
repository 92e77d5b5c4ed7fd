"""Print what a pipeline returned."""

from __future__ import annotations

from typing import Any

from kdlab.cli.common import main_print


def print_result(result: Any) -> None:
    """Pipelines return objects that know how to show themselves (`render()`)."""
    main_print(result.render())
