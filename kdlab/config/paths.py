"""The path fields of an experiment: relative ones are read from the config file's folder, so
`kdlab validate` and `kdlab run` agree from whatever folder they are started."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

from kdlab.errors import KdlabError


def _is_path_key(key: str) -> bool:
    return key == "path" or key.endswith(("_path", "_dir"))


def _path_fields(raw: dict[str, Any]) -> Iterator[tuple[str, dict, str, str]]:
    """(location, holder, key, kind) for every path field: data params named `path` or `*_path`
    (inputs: a file or folder), teachers' `checkpoint` and models' `weights` (a file or a Hugging
    Face folder), models' `hf.path` (a folder), pipeline `*_path` and `*_dir` (outputs)."""

    def data(loc: str, spec: Any):
        params = spec.get("params") if isinstance(spec, dict) else None
        if isinstance(params, dict):
            for k in params:
                if _is_path_key(k):
                    yield f"{loc}.params.{k}", params, k, "input"

    def model(loc: str, spec: Any):
        if isinstance(spec, dict):
            if "weights" in spec:
                yield f"{loc}.weights", spec, "weights", "weights"
            hf = spec.get("hf")
            if isinstance(hf, dict) and "path" in hf:
                yield f"{loc}.hf.path", hf, "path", "folder"

    yield from data("data", raw.get("data"))
    yield from model("student", raw.get("student"))
    teachers = [("teacher", raw.get("teacher"))]
    if isinstance(raw.get("teachers"), list):
        teachers += [(f"teachers.{i}", t) for i, t in enumerate(raw["teachers"])]
    for loc, t in teachers:
        if isinstance(t, dict):
            if "checkpoint" in t:
                yield f"{loc}.checkpoint", t, "checkpoint", "weights"
            yield from model(f"{loc}.model", t.get("model"))
            yield from data(f"{loc}.data", t.get("data"))
    pipeline = raw.get("pipeline")
    if isinstance(pipeline, dict):
        for k in pipeline:
            if k != "name" and _is_path_key(k):
                yield f"pipeline.{k}", pipeline, k, "output"


def resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """Make every relative path field absolute from `base` (in place); `~` is expanded."""
    for _, holder, key, _ in _path_fields(raw):
        value = holder[key]
        if isinstance(value, str) and value:
            p = Path(value).expanduser()
            holder[key] = os.path.abspath(base / p)  # normalises `..` without following links


def check_inputs_exist(raw: dict[str, Any], source: str) -> None:
    """KdlabError naming the first input path field (data file, teacher checkpoint) that is missing."""
    for loc, holder, key, kind in _path_fields(raw):
        value = holder[key]
        if kind == "output" or not isinstance(value, str) or not value:
            continue
        if not Path(value).exists():
            raise KdlabError(
                f"{source}: {loc} '{value}' does not exist (relative paths in a config are read from "
                "the config file's folder; on the command line, from the current folder)"
            )
        p = Path(value)
        if kind == "weights" and p.is_dir() and not (p / "config.json").is_file():
            raise KdlabError(f"{source}: {loc} '{value}' is a folder without a Hugging Face config.json; give the "
                             "checkpoint or .safetensors file, or a folder saved by save_pretrained")
        if kind == "folder" and not p.is_dir():
            raise KdlabError(f"{source}: {loc} '{value}' is a file; give the Hugging Face model's folder "
                             "(config.json and .safetensors weights)")
