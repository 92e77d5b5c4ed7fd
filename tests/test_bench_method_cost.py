"""`kdlab bench methods`: the per-method cost benchmark runs each method in a subprocess and
reports time and memory relative to CE; the memory figure sees torch allocations."""

from __future__ import annotations

import pytest

from kdlab.bench.method_cost import CostSetup, run
from kdlab.cli.main import main
from kdlab.errors import KdlabError


@pytest.mark.slow
def test_method_cost_rows_and_memory_sees_crd_banks():
    s = CostSetup(batch_size=8, steps=2, repeats=1, methods=["kd", "crd"])
    rows = {r["method"]: r for r in run(s, log=lambda *_: None)}
    assert list(rows) == ["ce", "kd", "crd"]  # CE first: the reference
    assert rows["ce"]["time_ratio"] == 1.0 and rows["ce"]["extra_ratio"] == 1.0
    for r in rows.values():
        assert r["step_s"] > 0 and r["peak_bytes"] > r["extra_bytes"] > 0
    # CRD's step holds B x (nce_k + 1) x 128 floats per side (2 x 8 x 16385 x 128 x 4 B = 128 MiB
    # of gathered bank rows) on top of CE's work: an RSS-blind measurement would miss it.
    assert rows["crd"]["extra_bytes"] - rows["ce"]["extra_bytes"] > 64 * 2**20


def test_method_cost_rejects_unknown_method(capsys):
    with pytest.raises(KdlabError, match="unknown method"):
        run(CostSetup(methods=["nope"]), log=lambda *_: None)
    assert main(["bench", "methods", "--methods", "kd,nope"]) == 2
    assert "unknown method(s) nope" in capsys.readouterr().err
