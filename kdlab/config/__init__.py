"""Experiment configs: one YAML file per experiment, validated before any work starts."""

from kdlab.config.load import load_config, parse_overrides
from kdlab.config.schema import Experiment, MethodSpec, ModelSpec, TeacherSpec, TrainSpec

__all__ = ["Experiment", "MethodSpec", "ModelSpec", "TeacherSpec", "TrainSpec", "load_config", "parse_overrides"]
