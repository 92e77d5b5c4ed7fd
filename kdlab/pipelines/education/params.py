"""Settings of the education pipeline (`pipeline: {name: education, ...}` in a config)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kdlab.config.schema import ModelSpec, TrainSpec

BASELINES = ("ce", "kd", "avg", "ca_mkd")
# What an ablation arm may change: how ED trains, not the groups or teachers it uses.
ARM_SETTINGS = ("grade_groups", "grade_epochs", "grade_stages", "alpha", "tau", "replay", "tr_pool", "keep_optimizer")


class GroupTeacherSpec(BaseModel):
    """How the per-group teachers are built and trained (default: the experiment's teacher
    model and recipe, trained on its group's classes only, with local labels)."""

    model_config = ConfigDict(extra="forbid")
    model: Optional[ModelSpec] = None
    train: Optional[TrainSpec] = None


class EducationParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Class groups: a number of (near-)equal groups, or explicit sizes (e.g. [33, 33, 34]).
    groups: int = Field(3, ge=1)
    group_sizes: Optional[list[int]] = None
    partition: Literal["index", "random", "superclass", "confusion"] = "index"
    partition_seed: int = 0
    # New groups introduced by each grade (default: one group per grade).
    grade_groups: Optional[list[int]] = None
    # Epoch at which each grade begins; the first must be 0 (default: equal shares of train.epochs).
    grade_epochs: Optional[list[int]] = None
    # Body stages of the student in use after each grade, cumulative (default: spread evenly;
    # the last must be all stages). An MLP or 1-D CNN is staged by its blocks this way.
    grade_stages: Optional[list[int]] = None
    # per_group: one teacher per group trained on that group's classes; generalist: the
    # experiment's teacher, its logits sliced per group.
    teacher_mode: Literal["per_group", "generalist"] = "per_group"
    teachers_per_group: int = Field(1, ge=1)  # several teachers: KD to the mean of their distributions
    group_teacher: GroupTeacherSpec = Field(default_factory=GroupTeacherSpec)
    alpha: float = Field(0.3, ge=0, le=1)  # weight of CE; (1 - alpha) weighs the sliced KD
    tau: float = Field(4.0, gt=0)
    # sequential: each epoch passes over group 1, then 2, ... (single-group batches, as the
    # reference); interleaved: the same single-group batches in a seeded order; mixed: each
    # batch drawn from all groups seen so far, each sample distilled by its own group's teacher.
    replay: Literal["sequential", "interleaved", "mixed"] = "sequential"
    # Pooling of the TR head: global average (kdlab's default) or average pooling with this
    # kernel and stride, flattened (the reference code's is 4x4); a smaller map is pooled whole.
    tr_pool: Union[Literal["global"], Annotated[int, Field(ge=1)]] = "global"
    keep_optimizer: bool = False  # carry momentum/Adam state across growth (the code resets it)
    # More ED runs on the same teachers and seeds, for ablations: arm name -> the settings it
    # changes (only those in ARM_SETTINGS), e.g. {mixed_a07: {replay: mixed, alpha: 0.7}}.
    arms: dict[str, dict[str, Any]] = Field(default_factory=dict)
    baselines: list[Literal["ce", "kd", "avg", "ca_mkd"]] = Field(default_factory=lambda: list(BASELINES))
    # Teachers of the multi-teacher baselines: this many full-class teachers (seeds +0, +1, ...).
    baseline_teachers: int = Field(3, ge=1)

    @model_validator(mode="after")
    def _check(self):
        if self.group_sizes is not None:
            if len(self.group_sizes) != self.groups or any(s < 1 for s in self.group_sizes):
                raise ValueError(f"group_sizes needs {self.groups} positive sizes (one per group), got {self.group_sizes}")
        if self.grade_groups is not None:
            if any(n < 1 for n in self.grade_groups) or sum(self.grade_groups) != self.groups:
                raise ValueError(f"grade_groups must be positive and sum to groups={self.groups}, got {self.grade_groups}")
        for name, arm in self.arms.items():
            bad = sorted(set(arm) - set(ARM_SETTINGS))
            if bad:
                raise ValueError(f"arm '{name}' changes {bad}; an arm may change only {list(ARM_SETTINGS)}")
            if name in ("ed", *BASELINES):
                raise ValueError(f"arm name '{name}' is taken by a built-in row; choose another")
            self.arm(name)  # each arm's settings validated as a whole
        n = self.num_grades
        if self.grade_epochs is not None:
            e = self.grade_epochs
            if len(e) != n or e[0] != 0 or any(b <= a for a, b in zip(e, e[1:])):
                raise ValueError(f"grade_epochs needs {n} increasing start epochs beginning with 0, got {e}")
        if self.grade_stages is not None:
            s = self.grade_stages
            if len(s) != n or s[0] < 0 or any(b < a for a, b in zip(s, s[1:])):
                raise ValueError(f"grade_stages needs {n} non-decreasing stage counts (one per grade), got {s}")
        return self

    def arm(self, name: str) -> "EducationParams":
        """The settings of one ablation arm: these, with the arm's changes."""
        return EducationParams(**{**self.model_dump(exclude={"arms"}), **self.arms[name]})

    @property
    def num_grades(self) -> int:
        return len(self.grade_groups) if self.grade_groups is not None else self.groups
