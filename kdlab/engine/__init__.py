"""The one training loop shared by every method, pipeline and task."""
