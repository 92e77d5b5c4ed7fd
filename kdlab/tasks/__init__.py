"""Tasks: how a model is run on a batch and how it is scored (classification, ranking, LM)."""

from kdlab.tasks.base import Task, get_task

__all__ = ["Task", "get_task"]
