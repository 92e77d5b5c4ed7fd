"""Name -> builder registries for models, datasets, methods, tasks and pipelines.

Each registered entry carries a one-line description and a reference (paper or source),
which `kdlab list` prints. Modules of a package register themselves on import; the
package's `__init__` imports every module in it, so adding an entry is one new file.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

from kdlab.errors import KdlabError, suggest


@dataclass
class Entry:
    name: str
    obj: Any
    description: str = ""
    reference: str = ""
    extra: dict = field(default_factory=dict)


class Registry:
    def __init__(self, kind: str, package: str):
        self.kind = kind
        self.package = package  # imported lazily so every entry is registered before lookup
        self._entries: dict[str, Entry] = {}
        self._loaded = False

    def register(self, name: str, description: str = "", reference: str = "", **extra) -> Callable:
        def deco(obj):
            if name in self._entries and self._entries[name].obj is not obj:
                raise ValueError(f"{self.kind} '{name}' registered twice")
            self._entries[name] = Entry(name, obj, description, reference, extra)
            return obj

        return deco

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            import_submodules(self.package)

    def get(self, name: str) -> Entry:
        self._load()
        if name not in self._entries:
            raise KdlabError(
                f"unknown {self.kind} '{name}'.{suggest(name, self._entries)}"
                f" Run `kdlab list {self.kind}s` for all names."
            )
        return self._entries[name]

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]


def import_submodules(package: str) -> None:
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


MODELS = Registry("model", "kdlab.models")
DATASETS = Registry("dataset", "kdlab.data")
METHODS = Registry("method", "kdlab.methods")
TASKS = Registry("task", "kdlab.tasks")
PIPELINES = Registry("pipeline", "kdlab.pipelines")
# Logging backends: an entry is `open_sink(run, config, spec)`, with `require` in its extras.
TRACKERS = Registry("logging backend", "kdlab.tracking")
