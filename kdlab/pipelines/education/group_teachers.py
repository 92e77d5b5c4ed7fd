"""The teachers of the groups: per-group teachers trained on their group's classes (one
pipeline stage each, stored and reused by key), or generalist teachers sliced per group."""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from kdlab.config.schema import Experiment, TeacherSpec, stable_hash
from kdlab.data.base import DataBundle, Split
from kdlab.errors import KdlabError
from kdlab.stages.context import RunContext
from kdlab.pipelines.education.params import EducationParams
from kdlab.stages.teachers import load_teacher, obtain_teacher, teacher_key, train_or_reuse_teacher
from kdlab.tasks.base import Task


class GroupTeacher:
    """Logits of one group's teacher(s) over that group's classes (in group order)."""

    def __init__(self, models: Sequence[nn.Module], classes: Optional[Sequence[int]] = None):
        self.models = [m.eval() for m in models]
        for m in self.models:
            m.requires_grad_(False)
        # For a generalist: the global class ids to keep; None for a teacher of the group only.
        self.classes = None if classes is None else torch.as_tensor(list(classes), dtype=torch.long)

    def __call__(self, x: Tensor) -> list[Tensor]:
        outs = []
        with torch.inference_mode():
            for m in self.models:
                z = m(x)
                if self.classes is not None:
                    z = z[:, self.classes.to(z.device)]
                outs.append(z.clone())  # inference tensors cannot enter autograd graphs
        return outs


def split_of_classes(split: Split, classes: Sequence[int], num_classes: int) -> Split:
    """Samples of `classes`, relabelled 0..len(classes)-1 in the order given."""
    y = split["y"]
    lut = torch.full((num_classes,), -1, dtype=torch.long, device=y.device)
    lut[torch.as_tensor(list(classes), device=y.device)] = torch.arange(len(classes), device=y.device)
    keep = lut[y] >= 0
    sub = split.subset(keep.nonzero().squeeze(1))
    sub.tensors["y"] = lut[sub["y"]]
    return sub


def group_bundle(data: DataBundle, classes: Sequence[int]) -> DataBundle:
    n = data.num_classes
    names = [data.class_names[c] for c in classes] if data.class_names else None
    return dataclasses.replace(
        data,
        train=split_of_classes(data.train, classes, n),
        val=split_of_classes(data.val, classes, n),
        test=split_of_classes(data.test, classes, n),
        num_classes=len(classes),
        class_names=names,
        superclass=None,
    )


def generalist_specs(exp: Experiment, count: int) -> list[TeacherSpec]:
    """Full-class teachers: the config's `teachers` list, or its `teacher` with seeds +0, +1, ..."""
    if len(exp.teachers) > 1:
        return list(exp.teachers)
    base = exp.all_teachers()
    if not base:
        raise KdlabError("the education pipeline needs a `teacher:` section (the generalist teacher, "
                         "also the model of the per-group teachers unless pipeline.group_teacher says otherwise)")
    spec = base[0]
    first = spec.seed if spec.seed is not None else exp.seeds[0]
    if spec.checkpoint and count > 1:
        return [spec]  # one stored checkpoint cannot be re-seeded
    return [spec.model_copy(update={"seed": first + i}) for i in range(count)]


def obtain_generalists(ctx: RunContext, exp: Experiment, data: DataBundle, task: Task, count: int) -> list[nn.Module]:
    return [obtain_teacher(ctx, s, exp, data, task, i) for i, s in enumerate(generalist_specs(exp, count))]


def obtain_group_teacher(ctx: RunContext, exp: Experiment, data: DataBundle, task: Task, spec: TeacherSpec,
                         classes: Sequence[int], label: str) -> nn.Module:
    """Train (or reuse) a teacher of `classes` only; keyed by the full-data teacher key plus the
    class list, so another experiment with the same group reuses it."""
    if spec.checkpoint:
        return load_teacher(spec, group_bundle(data, classes), spec.checkpoint, label)
    key = stable_hash({"teacher": teacher_key(spec, exp, task), "classes": [int(c) for c in classes]})
    return train_or_reuse_teacher(
        ctx, spec, exp, group_bundle(data, classes), task, key=key, role=label,
        name=f"{exp.name}-{label.replace(' ', '')}", data_spec=exp.data,
        extra_config={"classes": [int(c) for c in classes]},
    )


def per_group_teachers(ctx: RunContext, exp: Experiment, data: DataBundle, task: Task, p: EducationParams,
                       groups: list[list[int]]) -> list[GroupTeacher]:
    base = exp.all_teachers()
    if not base and p.group_teacher.model is None:
        raise KdlabError("per-group teachers need a model: set pipeline.group_teacher.model or a `teacher:` section")
    model = p.group_teacher.model or base[0].model
    train = p.group_teacher.train or (base[0].train if base else None) or exp.train
    first = (base[0].seed if base and base[0].seed is not None else exp.seeds[0])
    methods = base[0].methods if base else TeacherSpec(model=model).methods
    out = []
    for k, classes in enumerate(groups):
        models = []
        for i in range(p.teachers_per_group):
            spec = TeacherSpec(model=model, train=train, methods=methods, seed=first + i)
            models.append(obtain_group_teacher(ctx, exp, data, task, spec, classes, f"group {k + 1} teacher {i}"))
        out.append(GroupTeacher([m.to(ctx.device) for m in models]))
    return out


def sliced_generalists(generalists: list[nn.Module], groups: list[list[int]], per_group: int) -> list[GroupTeacher]:
    if per_group > len(generalists):
        raise KdlabError(f"teachers_per_group={per_group} generalist teachers asked for, but only "
                         f"{len(generalists)} exist; raise baseline_teachers or lower teachers_per_group")
    return [GroupTeacher(generalists[:per_group], classes) for classes in groups]
