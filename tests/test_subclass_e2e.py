"""End-to-end: the subclass experiment on tiny budgets, the digits_coarse data, and the
`kdlab subclasses` tool."""

import pytest
import torch

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
