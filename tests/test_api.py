"""kdlab.api.distill: a teacher and a student nn.Module and tensors in, the trained student and
its metrics out, through the same stage, engine and store as `kdlab run`."""

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kdlab import api
from kdlab.config.schema import DataSpec
from kdlab.errors import KdlabError
from kdlab.stages.building import load_data
from kdlab.store.runstore import RunStore

FAST = dict(epochs=2, lr=0.01, batch_size=64, device="cpu", progress=False)


class TupleNet(nn.Module):
    """Returns (logits, hidden): the logits are the first item."""

    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU())
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        h = self.body(x)
        return self.head(h), h


@pytest.fixture(scope="module")
def digits():
    d = load_data(DataSpec(name="digits"))
    return tuple((s["x"], s["y"]) for s in (d.train, d.val, d.test))


@pytest.fixture(scope="module")
def teacher(digits):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    return api.distill(None, net, *digits, methods="ce", **FAST).student


def student(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return TupleNet(8)


def test_kd_student_differs_from_ce_student_and_repeats_exactly(digits, teacher):
    kd = api.distill(teacher, student(), *digits, methods=["ce", {"name": "kd", "tau": 4}], **FAST)
    again = api.distill(teacher, student(), *digits, methods=["ce", {"name": "kd", "tau": 4}], **FAST)
    ce = api.distill(None, student(), *digits, methods="ce", **FAST)
    assert all(h["train_kd"] > 0 for h in kd.history) and "train_kd" not in ce.history[0]
    assert kd.history[0]["train_ce"] != ce.history[0]["train_ce"]  # KD changed what the student learnt
    assert not torch.equal(kd.student.head.weight, ce.student.head.weight)
    strip = lambda hs: [{k: v for k, v in h.items() if "time" not in k} for h in hs]  # noqa: E731
    assert strip(kd.history) == strip(again.history)
    assert kd.summary["test_top1"] == again.summary["test_top1"]
    assert kd.summary["params"] == 64 * 8 + 8 + 8 * 10 + 10


def test_dataset_and_dataloader_give_the_same_run_as_tensors(digits, teacher):
    """Both are read whole into tensors: the run is the tensors' run."""
    train, val, test = digits
    ref = api.distill(teacher, student(), train, val, test, methods="kd", **FAST)
    for given in (TensorDataset(*train), DataLoader(TensorDataset(*train), batch_size=100)):
        got = api.distill(teacher, student(), given, TensorDataset(*val), DataLoader(TensorDataset(*test)),
                          methods="kd", **FAST)
        assert [h["train_kd"] for h in got.history] == [h["train_kd"] for h in ref.history]
        assert got.summary["test_top1"] == ref.summary["test_top1"]


def test_store_records_the_run_with_its_safetensors(digits, teacher, tmp_path):
    out = api.distill(teacher, student(), *digits, methods="kd", store=str(tmp_path / "runs"), **FAST)
    (row,) = RunStore(tmp_path / "runs").rows()
    assert row["id"] == out.run_id and row["status"] == "done" and row["summary"]["test_top1"] == out.summary["test_top1"]
    assert (Path(out.run_path) / "model.safetensors").is_file()


def test_bad_calls(digits, teacher):
    with pytest.raises(KdlabError, match="method\\(s\\) kd need a teacher"):
        api.distill(None, student(), *digits, methods="kd", **FAST)
    with pytest.raises(KdlabError, match="method 'kd' has no hyper-parameter 'temperature'"):
        api.distill(teacher, student(), *digits, methods=[{"name": "kd", "temperature": 4}], **FAST)
    with pytest.raises(KdlabError, match="train must be \\(x, y\\) tensors"):
        api.distill(teacher, student(), "digits.npz", **FAST)
    x, y = digits[0]
    with pytest.raises(KdlabError, match="gives 5 logits per sample but the data has 10 classes"):
        api.distill(None, nn.Sequential(nn.Flatten(), nn.Linear(64, 5)), (x, y), methods="ce", **FAST)


def test_readme_example_runs():
    text = (Path(__file__).parents[1] / "README.md").read_text()
    code = text.split("## From Python", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the README's own example
    assert scope["result"].history[-1]["train_kd"] > 0 and len(scope["result"].history) == 20
