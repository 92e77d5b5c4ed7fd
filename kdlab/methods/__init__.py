"""Distillation methods: one file per family, one class per method, registered by name."""

from kdlab.methods.base import Method, MethodContext, MethodParams, Needs, Outputs, register_method

__all__ = ["Method", "MethodContext", "MethodParams", "Needs", "Outputs", "register_method"]
