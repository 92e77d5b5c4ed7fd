"""Experiment trackers: sinks that mirror what a run records (TensorBoard, MLflow, ...).

The run store stays the source of truth; a backend is one module here with `require()`
and `open_sink(run, config, spec)` (see base.py), so another one (W&B) is one more file.
"""
