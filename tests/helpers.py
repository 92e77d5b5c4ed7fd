"""Shared helpers for end-to-end tests: tiny configs and an in-process CLI runner."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from kdlab.cli.main import main

TINY = {
    "name": "tiny",
    "seeds": [0],
    "device": "cpu",
    "data": {"name": "digits", "batch_size": 64},
    "teacher": {"model": {"name": "mlp", "params": {"hidden": [64]}}},
    "student": {"name": "mlp", "params": {"hidden": [16]}},
    "methods": [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5, "tau": 4}],
    "train": {"epochs": 3, "optimizer": {"name": "adam", "lr": 0.01, "weight_decay": 0.0}},
}


def write_config(tmp_path: Path, cfg: dict | None = None, name: str = "exp.yaml", **updates) -> str:
    cfg = json.loads(json.dumps(cfg or TINY))
    cfg.update(updates)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def cli(*args: str) -> int:
    return main([str(a) for a in args])


def run_bad(capsys, *args):
    """Run the CLI on bad input: (exit code, non-empty stderr lines, stderr)."""
    code = cli(*args)
    err = capsys.readouterr().err
    return code, [l for l in err.strip().splitlines() if l.strip()], err


def assert_clear(code, lines, err, *needles):
    """Exit code 2, one or two lines, no traceback, and every needle in the message."""
    assert code == 2, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert 1 <= len(lines) <= 2, err
    for n in needles:
        assert n in err, f"{n!r} not in {err!r}"
