"""The grade loop on tiny in-memory data: every setting changes what is learned."""

import pytest
import torch
from torch import nn

from kdlab.config.schema import TrainSpec
from kdlab.data.base import DataBundle, Split
from kdlab.engine.trainer import Trainer, TrainSetup
from kdlab.pipelines.education.grades import EducationCurriculum, plan_grades
from kdlab.tasks.classification import Classification
from kdlab.pipelines.education.group_teachers import GroupTeacher
from kdlab.pipelines.education.params import EducationParams
from kdlab.registry import MODELS

GROUPS = [[0, 1], [2, 3], [4, 5]]
TRAIN = TrainSpec(epochs=6, optimizer={"lr": 0.01}, schedule={"name": "constant"})


MEANS = torch.randn(6, 5, generator=torch.Generator().manual_seed(0)) * 3


class NearestMean(nn.Module):
    """A good teacher of a group: logits = -scale * squared distance to its classes' means."""

    def __init__(self, classes, scale):
        super().__init__()
        self.means, self.scale = MEANS[classes], scale

    def forward(self, x):
        return -self.scale * torch.cdist(x, self.means) ** 2


def _data():
    g = torch.Generator().manual_seed(1)
    means = MEANS

    def split(n):
        y = torch.arange(6).repeat_interleave(n)
        return Split({"x": means[y] + torch.randn(len(y), 5, generator=g), "y": y})

    return DataBundle(train=split(24), val=split(8), test=split(8), num_classes=6, input_shape=(5,))


def _teachers(seed):
    return [GroupTeacher([NearestMean(c, 0.5 + seed)]) for c in GROUPS]


class Log:
    """A recorder that keeps nothing but calls `fn` with each epoch's record."""

    def __init__(self, fn):
        self.log, self.rewrite, self.save, self.where = fn, lambda h: None, lambda n, o: None, str


def train_grades(student, data, plan, teachers, p, log=None):
    setup = TrainSetup(student=student, data=data, task=Classification(data), train=TRAIN, seed=0,
                       device=torch.device("cpu"), batch_size=8, eval_batch_size=64)
    return Trainer(setup, EducationCurriculum(plan, teachers, p), Log(log) if log else None).fit()


def _run(teacher_seed=0, **kw):
    data = _data()
    teachers = _teachers(teacher_seed)
    p = EducationParams(groups=3, grade_epochs=[0, 2, 4], **kw)
    torch.manual_seed(0)
    student = MODELS.get("mlp").obj(num_classes=6, input_shape=(5,), hidden=[32, 32, 32])
    plan = plan_grades(p, GROUPS, 3, 6)
    run = train_grades(student, data, plan, teachers, p)
    return run, student


def test_three_grades_grow_the_student_and_learn():
    seen = {}
    torch.manual_seed(0)
    plain = MODELS.get("mlp").obj(num_classes=6, input_shape=(5,), hidden=[32, 32, 32])
    init = {k: v.clone() for k, v in plain.state_dict().items()}

    def log(record):
        if record["epoch"] == 1:  # end of grade 1: only stem + block 0 and the TR head moved
            seen["g1"] = {k: v.clone() for k, v in student.state_dict().items()}

    data = _data()
    teachers = _teachers(0)
    p = EducationParams(groups=3, grade_epochs=[0, 2, 4])
    torch.manual_seed(0)
    student = MODELS.get("mlp").obj(num_classes=6, input_shape=(5,), hidden=[32, 32, 32])
    plan = plan_grades(p, GROUPS, 3, 6)
    run = train_grades(student, data, plan, teachers, p, log)
    g1 = seen["g1"]
    assert not torch.equal(g1["blocks.0.0.weight"], init["blocks.0.0.weight"])  # grade 1 trained block 0
    for k in ("blocks.1.0.weight", "blocks.2.0.weight", "fc.weight"):  # later stages waited
        assert torch.equal(g1[k], init[k]), k
    final = student.state_dict()
    for k in ("blocks.1.0.weight", "blocks.2.0.weight", "fc.weight"):
        assert not torch.equal(final[k], init[k]), k
    h = run.history
    assert [r["grade"] for r in h] == [1, 1, 2, 2, 3, 3]
    acc = run.summary["grade_accuracy"]
    assert set(acc[0]) == {"1"} and set(acc[1]) == {"1", "2"} and set(acc[2]) == {"1", "2", "3"}
    assert h[1]["train_total"] < h[0]["train_total"]
    assert run.summary["test_top1"] > 100 / 6 + 25  # well above chance on 6 classes
    assert "best_test_top1" in run.summary and run.summary["best_epoch"] in (4, 5)


def test_kd_term_uses_the_group_teachers():
    _, a = _run(teacher_seed=0)
    _, b = _run(teacher_seed=1)
    assert not torch.equal(a.fc.weight, b.fc.weight)
    # With alpha = 1 (CE only) the teachers do not matter.
    _, c = _run(teacher_seed=0, alpha=1.0)
    _, d = _run(teacher_seed=1, alpha=1.0)
    assert torch.equal(c.fc.weight, d.fc.weight)


@pytest.mark.parametrize("setting", [{"replay": "interleaved"}, {"keep_optimizer": True}])
def test_replay_order_and_optimizer_carry_over_change_training(setting):
    _, base = _run()
    _, other = _run(**setting)
    assert not torch.equal(base.blocks[0][0].weight, other.blocks[0][0].weight)
    _, again = _run(**setting)
    assert torch.equal(other.blocks[0][0].weight, again.blocks[0][0].weight)  # and stay reproducible


def test_mixed_replay_draws_batches_from_every_seen_group_and_teaches_each_sample_by_its_own():
    data, teachers = _data(), _teachers(0)
    p = EducationParams(groups=3, grade_epochs=[0, 2, 4], replay="mixed")
    torch.manual_seed(0)
    student = MODELS.get("mlp").obj(num_classes=6, input_shape=(5,), hidden=[32, 32, 32])
    cur = EducationCurriculum(plan_grades(p, GROUPS, 3, 6), teachers, p)
    setup = TrainSetup(student=student, data=data, task=Classification(data), train=TRAIN, seed=0,
                       device=torch.device("cpu"), batch_size=8, eval_batch_size=64)
    Trainer(setup, cur, None)._set_up()  # attaches the curriculum
    for epoch, classes in ((0, {0, 1}), (2, {0, 1, 2, 3}), (4, set(range(6)))):
        batches = list(cur.batches(epoch))
        assert len(batches) == cur.steps(epoch) == -(-24 * len(classes) // 8)
        ys = torch.cat([b["y"] for b in batches])
        assert sorted(ys.tolist()) == sorted(c for c in classes for _ in range(24))  # each seen sample once
        assert all(torch.equal(b["group"], b["y"] // 2) for b in batches)  # GROUPS: classes 2k, 2k+1
        if epoch:  # batches mix the groups seen so far (single-group batches would all fail this)
            assert sum(len(set(b["group"].tolist())) > 1 for b in batches) > len(batches) // 2
        b = batches[0]
        outs = cur.teacher_outputs(b)
        for o in outs:  # each group's teacher sees only its own rows
            k, rows = o.extras["group"], o.extras["rows"]
            assert torch.equal(b["group"][rows], torch.full_like(rows, k))
            assert torch.allclose(o.logits, teachers[k](b["x"][rows])[0])
        assert sorted(torch.cat([o.extras["rows"] for o in outs]).tolist()) == list(range(len(b["y"])))


def test_mixed_replay_trains_differently_and_reproducibly():
    run, base = _run()
    mixed_run, mixed = _run(replay="mixed")
    assert not torch.equal(base.blocks[0][0].weight, mixed.blocks[0][0].weight)
    _, again = _run(replay="mixed")
    assert torch.equal(mixed.blocks[0][0].weight, again.blocks[0][0].weight)
    # Steps: grades of 2 epochs over 48, 96, 144 samples at batch 8 (the groups split evenly here).
    assert run.summary["steps"] == 2 * (6 + 12 + 18) == mixed_run.summary["steps"]
    # Read once from these runs: same data, teachers, init and steps; only the batches differ.
    assert (run.summary["test_top1"], mixed_run.summary["test_top1"]) == pytest.approx(PINS, abs=1e-4)


PINS = (72.9167, 79.1667)
