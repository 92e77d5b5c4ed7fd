"""User-facing errors: the CLI prints their message in one or two lines and exits 2."""

import difflib


class KdlabError(Exception):
    """A problem with the user's input (config, data, checkpoint): shown without a traceback."""


def suggest(name: str, choices, n: int = 3) -> str:
    """' Did you mean: a, b?' for the closest names, or '' when none is close."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=n, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else ""
