"""End-to-end: the subclass experiment on tiny budgets, the digits_coarse data, and the
`kdlab subclasses` tool."""

import io
from pathlib import Path

import pytest
import torch
from rich.console import Console

from helpers import assert_pinned, history
from kdlab.cli.main import main
from kdlab.config.load import validate
from kdlab.stages.runner import run_experiment
from kdlab.registry import DATASETS
from kdlab.store.runstore import RunStore

TINY = [
    "seeds=[0]", "train.epochs=3", "teacher.train.epochs=4", "device=cpu",
    "teacher.model.params.base.params.channels=[8,16]", "student.params.base.params.hidden=[32]",
]


def test_digits_coarse_keeps_fine_labels():
    b = DATASETS.get("digits_coarse").obj(seed=0, groups=2)
    for s in (b.train, b.val, b.test):
        assert torch.equal(s["y"], s["fine"] // 5)
        assert set(s["fine"].tolist()) == set(range(10))
    assert b.num_classes == 2 and b.input_shape == (1, 8, 8)


@pytest.mark.slow
def test_subclass_experiment_runs_and_subclass_kd_learns_teacher_subclasses(store, capsys):
    from kdlab.config.load import apply_overrides, parse_overrides, read_yaml

    raw = apply_overrides(read_yaml("configs/subclass/digits_2x5.yaml"), parse_overrides(TINY))
    res = run_experiment(validate(raw), store=store, progress=False)
    assert set(res.results) == {"teacher", "scratch", "kd", "subclass_kd"}
    n_test = 359
    assert int(res.counts.sum()) == n_test and res.counts.shape == (10, 10)
    # The teacher's L_aux (logged as a train term) fell, so its subclasses became more distinct.
    st = RunStore(store)
    teacher = [r for r in st.rows() if r["kind"] == "teacher"][0]
    hist = history(teacher["path"])
    assert hist[-1]["train_subclass_aux"] < hist[0]["train_subclass_aux"]
    # The subclass-KD student's cross-entropy to the teacher's subclass distribution fell, and
    # its result differs from the scratch student trained with the same seed.
    sk = [r for r in st.rows() if r["variant"] == "subclass_kd"][0]
    hist = history(sk["path"])
    assert hist[-1]["train_subclass_kd"] < hist[0]["train_subclass_kd"]
    assert res.results["subclass_kd"][0]["val_loss"] != res.results["scratch"][0]["val_loss"]
    # Read once from this tiny run (see helpers.assert_pinned).
    assert_pinned({k: v[0]["test_top1"] for k, v in res.results.items()}, PINS)
    # The CLI tool prints the learned subclass × digit table of the teacher run: the same counts
    # as the pipeline's, one row per subclass `class.k`, and their purity.
    capsys.readouterr()
    assert main(["subclasses", teacher["id"], "--store", store]) == 0
    out = capsys.readouterr().out
    labels, counts = printed_counts(out)
    assert labels == [f"{c}.{k}" for c in range(2) for k in range(5)]
    assert counts == res.counts.tolist()
    expected_purity = 100 * sum(max(row) for row in counts) / n_test
    assert f"purity {expected_purity:.1f}%" in " ".join(out.split())
    assert expected_purity == pytest.approx(36.2117, abs=1e-3)
    # A run without a subclass head is refused with a clear error (exit code 2).
    assert main(["subclasses", "nope", "--store", store]) == 2


PINS = {"teacher": 63.2312, "scratch": 79.6657, "kd": 82.4513, "subclass_kd": 79.6657}


def printed_counts(out: str) -> tuple[list[str], list[list[int]]]:
    """Row labels and counts of the printed table (rich draws a zero as `·`)."""
    labels, counts = [], []
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if len(cells) > 3 and cells[0].replace(".", "").isdigit():
            labels.append(cells[0])
            counts.append([0 if c == "·" else int(c) for c in cells[1:-2]])
            assert int(cells[-2]) == sum(counts[-1])  # the total column
    return labels, counts


def test_student_budget_is_whole_epochs_of_the_asked_steps():
    from kdlab.pipelines.subclass import budget

    # digits_coarse: 1,259 training images; batch 64 -> 20, 5, 2, 1 batches per epoch at 100/25/10/5%.
    assert [budget(n, 64, 1200, 60) for n in (1259, 315, 126, 63)] == [(60, 1200), (240, 1200), (600, 1200), (1200, 1200)]
    assert budget(100, 64, 3, 60) == (2, 4)  # rounded up to whole epochs
    assert budget(1259, 64, 0, 7) == (7, 140)  # no step budget: the config's epochs


@pytest.mark.slow
def test_fraction_sweep_keeps_the_teacher_and_the_student_steps(store):
    from kdlab.config.load import apply_overrides, parse_overrides, read_yaml

    over = [*TINY, "pipeline.fractions=[1.0,0.05]", "pipeline.steps=40"]
    raw = apply_overrides(read_yaml("configs/subclass/digits_2x5_fractions.yaml"), parse_overrides(over))
    res = run_experiment(validate(raw), store=store, progress=False)
    assert [(p["fraction"], p["train"], p["epochs"], p["steps"]) for p in res.points] == [(1.0, 1259, 2, 40), (0.05, 63, 40, 40)]
    rows = RunStore(store).rows()
    assert len([r for r in rows if r["kind"] == "teacher"]) == 1  # trained on the full split once, reused
    # Each student's recorded budget: 2 epochs of 20 batches, or 40 of one batch validated every 20.
    students = [history(r["path"]) for r in rows if r["variant"] == "subclass_kd"]
    assert sorted(len(h) for h in students) == [2, 40]
    assert sorted(sum(1 for e in h if "val_top1" in e) for h in students) == [2, 2]
    for p in res.points:  # the teacher row is the same model at every fraction
        assert p["result"].results["teacher"][0]["test_top1"] == res.points[0]["result"].results["teacher"][0]["test_top1"]
    got = {f"{100 * p['fraction']:g}%_{v}": r[0]["test_top1"] for p in res.points for v, r in p["result"].results.items()}
    assert_pinned(got, SWEEP_PINS)
    assert Path(res.plot_path).is_file() and Path(res.plot_path).stat().st_size > 1000
    buf = io.StringIO()  # the table shows each arm's gain over scratch
    Console(file=buf, width=250).print(res.render())
    assert "kd − scratch" in buf.getvalue() and "subclass_kd − scratch" in buf.getvalue()


SWEEP_PINS = {"100%_teacher": 63.2312, "100%_scratch": 75.4875, "100%_kd": 74.6518, "100%_subclass_kd": 76.0446,
              "5%_teacher": 63.2312, "5%_scratch": 66.0167, "5%_kd": 66.2953, "5%_subclass_kd": 67.1309}
