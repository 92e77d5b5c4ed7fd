"""What a model says: logits and intermediate features read through forward hooks."""

from kdlab.knowledge.taps import FeatureTap, resolve_layer

__all__ = ["FeatureTap", "resolve_layer"]
