"""`kdlab diagnose` end to end on tiny data: every report section and file, and the
instruments' numbers from real training."""

import json

import pytest
import yaml

from kdlab.cli.cmd_diagnose import builtin_config_path
from kdlab.cli.main import main
from kdlab.config.load import read_yaml, validate
from kdlab.report.diagnose_report import SECTIONS

TINY = {
    "name": "tiny-diagnose",
    "seeds": [0, 1],
    "device": "cpu",
    "data": {"name": "hierarchy", "batch_size": 32,
             "params": {"num_superclasses": 2, "classes_per_superclass": 3, "dim": 8, "samples_per_class": 30}},
    "teacher": {"model": {"name": "mlp", "params": {"hidden": [32]}}, "train": {"epochs": 4}},
    "student": {"name": "mlp", "params": {"hidden": [8]}},
    "train": {"epochs": 2},
}  # fmt: skip


def test_builtin_config_is_packaged_and_valid():
    exp = validate(read_yaml(builtin_config_path()), "builtin")
    assert exp.pipeline.name == "diagnose" and len(exp.seeds) >= 3 and exp.data.name == "hierarchy"


def test_diagnose_without_a_teacher_is_a_user_error(tmp_path, capsys):
    cfg = dict(TINY)
    cfg.pop("teacher")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["diagnose", str(path), "--store", str(tmp_path / "s"), "--quiet"]) == 2
    assert "teacher" in capsys.readouterr().err


@pytest.mark.slow
def test_diagnose_end_to_end_writes_every_section(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "report"
    rc = main(["diagnose", str(path), "--store", str(tmp_path / "s"), "--out", str(out), "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    for f in ["report.html", "report.md", "results.json", "ladder.png", "attribution.png", "heatmaps.png",
              "w_vs_q.png", "teacher.png"]:
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    for s in SECTIONS:
        assert f"## {s}" in md and f"<h2>{s}</h2>" in html
        assert s in printed
    for img in ["ladder.png", "heatmaps.png", "w_vs_q.png", "attribution.png"]:
        assert f'src="{img}"' in html
    assert "A(KD) − A(KD-pt)" in md  # the attribution formula is stated
    res = json.loads((out / "results.json").read_text())
    assert list(res["rungs"]) == ["CE", "LS", "KD-pt", "KD-sim", "KD-pt+sim", "KD"]
    for rung, runs in res["rungs"].items():
        assert len(runs) == 2 and all(0 <= r["top1"] <= 100 for r in runs)
    # Real measurements: CE leaves every gradient as it is (w = 1); LS and KD rescale them.
    assert all(abs(r["w_mean"] - 1) < 1e-5 for r in res["rungs"]["CE"])
    assert all(r["w_mean"] < 0.99 for r in res["rungs"]["LS"])
    assert all(r["w_mean"] < 0.99 for r in res["rungs"]["KD"])
    # Different targets give different students.
    assert res["rungs"]["KD-pt"][0]["geometry"] != res["rungs"]["CE"][0]["geometry"]
    assert set(res["similarity"]) >= {"teacher", "reference", "CE", "KD"}
    assert "attribution" in res["analysis"] and "geometry_gap" in res["analysis"]
