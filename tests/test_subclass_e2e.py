"""End-to-end: the subclass experiment on tiny budgets, the digits_coarse data, and the
`kdlab subclasses` tool."""

import pytest
import torch

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
    hist = [__import__("json").loads(l) for l in open(f"{teacher['path']}/metrics.jsonl")]
    assert hist[-1]["train_subclass_aux"] < hist[0]["train_subclass_aux"]
    # The subclass-KD student's cross-entropy to the teacher's subclass distribution fell, and
    # its result differs from the scratch student trained with the same seed.
    sk = [r for r in st.rows() if r["variant"] == "subclass_kd"][0]
    hist = [__import__("json").loads(l) for l in open(f"{sk['path']}/metrics.jsonl")]
    assert hist[-1]["train_subclass_kd"] < hist[0]["train_subclass_kd"]
    assert res.results["subclass_kd"][0]["val_loss"] != res.results["scratch"][0]["val_loss"]
    # The CLI tool prints the learned subclass × digit table of the teacher run.
    capsys.readouterr()
    assert main(["subclasses", teacher["id"], "--store", store]) == 0
    out = capsys.readouterr().out
    assert "purity" in out and "0.4" in out and "1.4" in out
    # A run without a subclass head is refused with a clear error (exit code 2).
    assert main(["subclasses", "nope", "--store", store]) == 2
