"""Pipelines: multi-stage recipes (teacher -> students, education grades, ladders), each a
sequence of ordinary training runs through the one engine. Registered by name; a config
selects one with `pipeline: {name: ...}` (default: `distill`)."""
