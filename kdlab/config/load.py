"""Read a YAML experiment, apply `key.sub=value` overrides, validate, and explain errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kdlab.config.paths import resolve_paths
from kdlab.config.schema import Experiment
from kdlab.errors import KdlabError


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML keeps the last silently,
    so a second `train:` section would replace the first)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *anchor` merges are meant to be overridden
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the base constructor explains it
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None,
                        f"duplicate key '{key}' (first at line {first.line + 1}); give each key once",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        raise KdlabError(f"config '{path}' is a folder; give the experiment's YAML file")
    if not p.is_file():
        raise KdlabError(f"config file '{path}' does not exist")
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise KdlabError(
            f"config '{path}' is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
            "an experiment must be a UTF-8 YAML file"
        ) from None
    except OSError as e:
        raise KdlabError(f"cannot read config '{path}': {e.strerror or e}") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no executable tags
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise KdlabError(f"malformed YAML in '{path}'{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise KdlabError(f"config '{path}' must be a mapping of sections (data, student, methods, …)")
    return raw


def parse_overrides(items: list[str]) -> list[tuple[list[str], Any]]:
    out = []
    for item in items:
        if "=" not in item:
            raise KdlabError(f"override '{item}' must look like key.sub=value")
        key, value = item.split("=", 1)
        try:
            parsed = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            parsed = value
        out.append((key.split("."), parsed))
    return out


def apply_overrides(raw: dict[str, Any], overrides: list[tuple[list[str], Any]]) -> dict[str, Any]:
    for keys, value in overrides:
        node: Any = raw
        for i, k in enumerate(keys):
            last = i == len(keys) - 1
            if isinstance(node, list):
                try:
                    idx = int(k)
                    node[idx]
                except (ValueError, IndexError):
                    raise KdlabError(f"override {'.'.join(keys)}: '{k}' is not an index of a {len(node)}-item list")
                if last:
                    node[idx] = value
                else:
                    node = node[idx]
            else:
                if last:
                    node[k] = value
                else:
                    node = node.setdefault(k, {})
                    if not isinstance(node, (dict, list)):
                        raise KdlabError(f"override {'.'.join(keys)}: '{k}' is a value, not a section")
    return raw


def format_validation_error(e: ValidationError, source: str) -> str:
    errs = e.errors()
    lines = []
    for err in errs[:2]:
        loc = ".".join(str(p) for p in err["loc"] if p not in ("function-after",)) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        shown = "" if isinstance(got, dict) or err["type"].startswith("value_error") else f" (got {got!r})"
        if err["type"] == "missing":
            shown = ""
        lines.append(f"{source}: {loc}: {msg}{shown}")
    if len(errs) > 2:
        lines[-1] += f" (and {len(errs) - 2} more)"
    return "\n".join(lines)


def validate(raw: dict[str, Any], source: str = "config") -> Experiment:
    try:
        return Experiment(**raw)
    except ValidationError as e:
        raise KdlabError(format_validation_error(e, source)) from None
    except TypeError as e:
        raise KdlabError(f"{source}: {e}") from None


def read_config(path: str | Path) -> dict[str, Any]:
    """The YAML mapping with its relative path fields made absolute from the file's folder."""
    raw = read_yaml(path)
    resolve_paths(raw, Path(os.path.abspath(path)).parent)
    return raw


def with_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply command-line overrides; a relative path among them is read from the current folder."""
    raw = apply_overrides(raw, parse_overrides(overrides or []))
    resolve_paths(raw, Path.cwd())  # the file's own paths are absolute by now
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> Experiment:
    return validate(with_overrides(read_config(path), overrides), str(path))
