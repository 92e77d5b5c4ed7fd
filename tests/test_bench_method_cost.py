"""`kdlab bench methods`: the per-method cost benchmark runs each method in a subprocess and
reports time and memory relative to CE; the memory figure sees torch allocations."""

from __future__ import annotations

import pytest

from kdlab.bench.method_cost import CostSetup, run
from kdlab.cli.main import main
from kdlab.errors import KdlabError


@pytest.mark.slow
def test_method_cost_rows_and_memory_sees_torch_allocations():
    small = {r["method"]: r for r in run(CostSetup(batch_size=8, steps=2, repeats=1, methods=["kd", "crd"]),
                                         log=lambda *_: None)}
    assert list(small) == ["ce", "kd", "crd"]  # CE first: the reference
    assert small["ce"]["time_ratio"] == 1.0 and small["ce"]["extra_ratio"] == 1.0
    for r in small.values():
        assert r["step_s"] > 0 and r["peak_bytes"] > r["extra_bytes"] > 0
    # The activations resnet8 keeps for backward grow with the batch (16 x 32 x 32 floats per
    # sample for each of its ~20 saved 32x32 maps: ~1.3 MiB a sample): an RSS-blind measurement
    # would not see the difference between batch 8 and batch 128.
    big = {r["method"]: r for r in run(CostSetup(batch_size=128, steps=2, repeats=1, methods=["kd"]),
                                       log=lambda *_: None)}
    assert big["ce"]["extra_bytes"] - small["ce"]["extra_bytes"] > 64 * 2**20


def test_method_cost_rejects_unknown_method(capsys):
    with pytest.raises(KdlabError, match="unknown method"):
        run(CostSetup(methods=["nope"]), log=lambda *_: None)
    assert main(["bench", "methods", "--methods", "kd,nope"]) == 2
    assert "unknown method(s) nope" in capsys.readouterr().err
