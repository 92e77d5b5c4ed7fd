"""The grade loop as a curriculum of the one trainer: grow the student stage by stage over one
lr schedule spanning all grades.

Each epoch of grade g replays every group seen so far, each batch drawn from one group and
taught by that group's teacher (groups in sequence, or their batches interleaved in a seeded
order), or (`replay: mixed`) each batch drawn from all of them, each sample taught by its own
group's teacher on its own group's slice. At growth the TR head is dropped and a new one (or, in the last grade, the student's
own head) is attached; the trainer then rebuilds the optimiser over the parameters now in use,
carrying the state of surviving parameters only when asked. Evaluation is in eval mode on
held-out splits; the best model is chosen in the last grade only, as in the reference code.

Resume, AMP, DDP, checkpoints and the run summary are the engine's: every random draw is
re-derived from (seed, grade) or (seed, epoch), so a resumed run reproduces an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn

from kdlab.data.base import Split
from kdlab.engine.curriculum import Curriculum
from kdlab.engine.loader import TensorLoader
from kdlab.errors import KdlabError
from kdlab.knowledge.outputs import Outputs
from kdlab.pipelines.education.growth import GradeModel, check_grade_stages, check_staged, column_index, default_grade_stages
from kdlab.pipelines.education.group_teachers import GroupTeacher
from kdlab.pipelines.education.loss import education_loss, mixed_education_loss
from kdlab.pipelines.education.params import EducationParams
from kdlab.seeding import derive, generator


@dataclass
class GradePlan:
    groups: list[list[int]]  # class ids of each group
    seen: list[list[int]]  # indices of the groups taught in each grade (cumulative)
    starts: list[int]  # first epoch of each grade
    stages: list[int]  # body stages in use in each grade
    epochs: int

    def grade_of(self, epoch: int) -> int:
        return max(g for g, s in enumerate(self.starts) if s <= epoch)

    def columns(self, g: int, num_classes: int) -> list[int]:
        if g == len(self.starts) - 1:
            return list(range(num_classes))  # the student's own head: class-id order
        return [c for k in self.seen[g] for c in self.groups[k]]


def plan_grades(p: EducationParams, groups: list[list[int]], body_stages: int, epochs: int) -> GradePlan:
    n = p.num_grades
    new = p.grade_groups or [1] * n
    seen, total = [], 0
    for m in new:
        total += m
        seen.append(list(range(total)))
    starts = p.grade_epochs or [round(epochs * g / n) for g in range(n)]
    if starts[-1] >= epochs:
        raise KdlabError(f"grade_epochs {starts}: the last grade must start before train.epochs={epochs}")
    if len(set(starts)) != n:
        raise KdlabError(f"{n} grades do not fit in train.epochs={epochs}; give more epochs or fewer groups")
    stages = p.grade_stages or default_grade_stages(body_stages, n)
    check_grade_stages(stages, body_stages)
    return GradePlan(groups, seen, list(starts), list(stages), epochs)


def group_accuracy(model: GradeModel, split: Split, lut: Tensor, groups: list[list[int]], seen: Sequence[int],
                   prepare, batch_size: int) -> dict[str, float]:
    """Accuracy (%) over the seen classes' samples and on each seen group, in eval mode;
    the prediction ranges over every class seen so far."""
    gid = torch.full_like(lut, -1)
    for k in seen:
        gid[torch.as_tensor(groups[k], device=lut.device)] = k
    correct = torch.zeros(len(groups), device=lut.device)
    count = torch.zeros(len(groups), device=lut.device)
    was = model.training
    model.eval()
    with torch.inference_mode():
        for batch in TensorLoader(split, batch_size, prepare=prepare):
            g = gid[batch["y"]]
            keep = g >= 0
            if not bool(keep.any()):
                continue
            pred = model(batch["x"][keep]).argmax(1)
            hit = (pred == lut[batch["y"][keep]]).float()
            correct.index_add_(0, g[keep], hit)
            count.index_add_(0, g[keep], torch.ones_like(hit))
    model.train(was)
    out = {"top1": 100.0 * float(correct.sum() / count.sum().clamp(min=1))}
    for k in seen:
        out[f"group{k + 1}"] = 100.0 * float(correct[k] / count[k].clamp(min=1))
    return out


class EducationModule(nn.Module):
    """One grade's trainable module: forward(batch, teachers) -> (loss, terms). A batch drawn
    from one group has `batch["group"]` = k and `teachers` that group's teacher outputs; a mixed
    batch has the group of every sample (a tensor) and teacher outputs per group present, each
    with `extras` {"group": k, "rows": the batch rows of group k}."""

    def __init__(self, model: GradeModel, lut: Tensor, slices: dict[int, Tensor], alpha: float, tau: float):
        super().__init__()
        self.model = model
        self.register_buffer("lut", lut, persistent=False)
        self.slices = slices
        self.alpha, self.tau = alpha, tau

    def forward(self, batch: dict[str, Tensor], teachers: list[Outputs]):
        z = self.model(batch["x"])
        targets = self.lut[batch["y"]]
        if isinstance(batch["group"], Tensor):
            parts: dict[int, tuple] = {}
            for t in teachers:
                k = t.extras["group"]
                parts.setdefault(k, (self.slices[k], t.extras["rows"], []))[2].append(t.logits)
            loss, terms = mixed_education_loss(z, targets, list(parts.values()), self.alpha, self.tau)
        else:
            cols = self.slices[batch["group"]]
            loss, terms = education_loss(z, targets, cols, [t.logits for t in teachers], self.alpha, self.tau)
        return loss, {k: v.detach() for k, v in terms.items()}


class GroupBatches:
    """The batches of one epoch: every seen group's loader, in sequence or interleaved (seeded);
    each batch is tagged with its group."""

    def __init__(self, loaders: list[TensorLoader], seen: list[int], epoch: int, seed: int, mode: str):
        self.loaders = loaders
        for k in seen:
            loaders[k].set_epoch(epoch)
        tags = [k for k in seen for _ in range(len(loaders[k]))]
        if mode == "interleaved":
            order = torch.randperm(len(tags), generator=generator(derive(seed, epoch, 4))).tolist()
            tags = [tags[i] for i in order]
        self.tags = tags

    def __len__(self) -> int:
        return len(self.tags)

    def __iter__(self):
        its = {k: iter(self.loaders[k]) for k in set(self.tags)}
        for k in self.tags:
            yield {**next(its[k]), "group": k}


class MixedBatches:
    """`replay: mixed`: the batches of one epoch drawn from all seen groups' samples together;
    each batch carries the group of every sample."""

    def __init__(self, loader: TensorLoader, group_of_class: Tensor, epoch: int):
        self.loader, self.group_of_class = loader, group_of_class
        loader.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            yield {**batch, "group": self.group_of_class[batch["y"]]}


class EducationCurriculum(Curriculum):
    find_unused_parameters = True  # stages not grown yet take no part in the loss

    def __init__(self, plan: GradePlan, teachers: list[GroupTeacher], params: EducationParams):
        self.plan, self.group_teachers, self.params = plan, teachers, params
        self.keep_optimizer_state = params.keep_optimizer
        self.grade = -1
        self.current: Optional[EducationModule] = None
        self.grade_accuracy: list[dict[int, float]] = []
        self._test: dict[int, dict[str, float]] = {}

    def attach(self, trainer) -> None:
        super().attach(trainer)
        data, student = trainer.data, trainer.student
        check_staged(student)
        n_cls = data.num_classes
        self.last_grade = len(self.plan.starts) - 1
        group_train = [data.train.subset((column_index(g, n_cls, trainer.device)[data.train["y"]] >= 0).nonzero().squeeze(1))
                       for g in self.plan.groups]
        for k, s in enumerate(group_train):
            if len(s) == 0:
                raise KdlabError(f"group {k + 1} (classes {self.plan.groups[k]}) has no training samples")
        self.loaders = [trainer.loader(s, shuffle=True, augment=True, seed=derive(trainer.setup.seed, 7, k))
                        for k, s in enumerate(group_train)]
        self.group_of_class = torch.full((n_cls,), -1, dtype=torch.long, device=trainer.device)
        for k, g in enumerate(self.plan.groups):
            self.group_of_class[torch.as_tensor(g, device=trainer.device)] = k
        if self.params.replay == "mixed":  # one loader per grade over the samples of its seen groups
            seen_rows = [(self.group_of_class[data.train["y"]].unsqueeze(1) == torch.as_tensor(seen, device=trainer.device))
                         .any(1).nonzero().squeeze(1) for seen in self.plan.seen]
            self.mixed_loaders = [trainer.loader(data.train.subset(rows), shuffle=True, augment=True,
                                                 seed=derive(trainer.setup.seed, 8, g)) for g, rows in enumerate(seen_rows)]
        self.sample = data.prepare(data.train["x"][:2]) if data.prepare else data.train["x"][:2]

    def _grade(self, g: int) -> EducationModule:
        if g != self.grade:
            t, plan, p = self.trainer, self.plan, self.params
            columns = plan.columns(g, t.data.num_classes)
            torch.manual_seed(derive(t.setup.seed, g, 5))  # the TR head's init depends on (seed, grade) only
            model = GradeModel(t.student, plan.stages[g], columns, g == self.last_grade, self.sample, p.tr_pool)
            lut = column_index(columns, t.data.num_classes, t.device)
            slices = {k: lut[torch.as_tensor(plan.groups[k], device=t.device)] for k in plan.seen[g]}
            self.current, self.grade = EducationModule(model, lut, slices, p.alpha, p.tau), g
        return self.current

    def module(self, epoch: int) -> nn.Module:
        return self._grade(self.plan.grade_of(epoch))

    def parameters(self, module: EducationModule):
        return module.model.trainable()

    def batches(self, epoch: int):
        g = self.plan.grade_of(epoch)
        if self.params.replay == "mixed":
            return MixedBatches(self.mixed_loaders[g], self.group_of_class, epoch)
        return GroupBatches(self.loaders, self.plan.seen[g], epoch, self.trainer.setup.seed, self.params.replay)

    def steps(self, epoch: int) -> int:
        g = self.plan.grade_of(epoch)
        if self.params.replay == "mixed":
            return len(self.mixed_loaders[g])
        return sum(len(self.loaders[k]) for k in self.plan.seen[g])

    def teacher_outputs(self, batch) -> list[Outputs]:
        group = batch["group"]
        if not isinstance(group, Tensor):
            return [Outputs(logits=z) for z in self.group_teachers[group](batch["x"])]
        outs = []
        for k in torch.unique(group).tolist():  # each group's teacher on its own samples
            rows = (group == k).nonzero().squeeze(1)
            outs += [Outputs(logits=z, extras={"group": k, "rows": rows}) for z in self.group_teachers[k](batch["x"][rows])]
        return outs

    def set_train_mode(self, module: EducationModule) -> None:
        module.model.set_mode(True)

    def _accuracy(self, split, epoch: int) -> dict[str, float]:
        g = self.plan.grade_of(epoch)
        t = self.trainer
        return group_accuracy(self.current.model, split, self.current.lut, self.plan.groups, self.plan.seen[g],
                              t.data.prepare, t.setup.eval_batch_size)

    def validate(self, epoch: int) -> dict[str, float]:
        return self._accuracy(self.trainer.data.val, epoch)

    def epoch_fields(self, epoch: int) -> dict[str, Any]:
        """The grade, and the test accuracy on each seen group (for the forgetting plot)."""
        g = self.plan.grade_of(epoch)
        test = self._accuracy(self.trainer.data.test, epoch)
        if epoch + 1 == self.plan.epochs or self.plan.grade_of(epoch + 1) != g:
            self.grade_accuracy.append({k: test[f"group{k + 1}"] for k in self.plan.seen[g]})
        return {"grade": g + 1, **{f"test_{n}": v for n, v in test.items()}}

    def selectable(self, epoch: int) -> bool:
        return self.plan.grade_of(epoch) == self.last_grade

    def state_dict(self) -> dict[str, Any]:
        return {"grade_accuracy": [{str(k): v for k, v in a.items()} for a in self.grade_accuracy]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.grade_accuracy = [{int(k): v for k, v in a.items()} for a in state.get("grade_accuracy", [])]

    def summary(self) -> dict[str, Any]:
        return {"grade_accuracy": [{str(k + 1): v for k, v in a.items()} for a in self.grade_accuracy],
                "steps": sum(self.steps(e) for e in range(self.plan.epochs))}
