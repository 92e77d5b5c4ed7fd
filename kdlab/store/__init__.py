"""The run store: one directory per run and an SQLite index of all runs."""

from kdlab.store.runstore import Run, RunStore, default_store_root

__all__ = ["Run", "RunStore", "default_store_root"]
