"""`kdlab diagnose` end to end on tiny data: every report section and file, and the
instruments' numbers from real training."""

import json

import pytest
import yaml

from helpers import assert_pinned
from kdlab.cli.cmd_diagnose import builtin_config_path
from kdlab.cli.main import main
from kdlab.config.load import read_yaml, validate
from kdlab.report.diagnose_report import SECTIONS

ADAM = {"name": "adam", "lr": 0.01, "weight_decay": 0.0}
TINY = {
    "name": "tiny-diagnose",
    "seeds": [0, 1],
    "device": "cpu",
    "data": {"name": "hierarchy", "batch_size": 32,
             "params": {"num_superclasses": 2, "classes_per_superclass": 3, "dim": 8, "samples_per_class": 30}},
    # Adam, and a teacher trained long enough to know something (61% test top-1, chance 17%).
    "teacher": {"model": {"name": "mlp", "params": {"hidden": [32]}}, "train": {"epochs": 30, "optimizer": ADAM}},
    "student": {"name": "mlp", "params": {"hidden": [8]}},
    "train": {"epochs": 4, "optimizer": ADAM},
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
    assert all(len(runs) == 2 for runs in res["rungs"].values())
    # Read once from this tiny run (see helpers.assert_pinned): each rung's top-1 and mean w per seed.
    figures = {f"{rung} {k} {i}": r[k] for rung, runs in res["rungs"].items() for i, r in enumerate(runs) for k in ("top1", "w_mean")}
    assert_pinned(figures, PINS)
    assert_pinned(res["teacher_test"], {"test_top1": 61.1111, "test_loss": 0.890471})
    # Each attribution "name (A − B)" is the mean over seeds of A's top-1 minus B's.
    for label, (value, _) in {**res["analysis"]["attribution"], **res["analysis"]["cross_check"]}.items():
        a, b = label[label.index("(") + 1 : -1].split(" − ")
        diffs = [x["top1"] - y["top1"] for x, y in zip(res["rungs"][a], res["rungs"][b])]
        assert value == pytest.approx(sum(diffs) / 2, abs=1e-9), label
    # Real measurements: CE leaves every gradient as it is (w = 1); LS and KD rescale them.
    assert all(abs(r["w_mean"] - 1) < 1e-5 for r in res["rungs"]["CE"])
    assert all(r["w_mean"] < 0.99 for r in res["rungs"]["LS"])
    assert all(r["w_mean"] < 0.99 for r in res["rungs"]["KD"])
    # Different targets give different students.
    assert res["rungs"]["KD-pt"][0]["geometry"] != res["rungs"]["CE"][0]["geometry"]
    assert set(res["similarity"]) >= {"teacher", "reference", "CE", "KD"}
    assert "attribution" in res["analysis"] and "geometry_gap" in res["analysis"]


PINS = {
    "CE top1 0": 33.3333, "CE w_mean 0": 1, "CE top1 1": 16.6667, "CE w_mean 1": 1,
    "LS top1 0": 30.5556, "LS w_mean 0": 0.333534, "LS top1 1": 16.6667, "LS w_mean 1": 0.344768,
    "KD-pt top1 0": 30.5556, "KD-pt w_mean 0": 0.401148, "KD-pt top1 1": 11.1111, "KD-pt w_mean 1": 0.409871,
    "KD-sim top1 0": 33.3333, "KD-sim w_mean 0": 0.97305, "KD-sim top1 1": 16.6667, "KD-sim w_mean 1": 0.973875,
    "KD-pt+sim top1 0": 33.3333, "KD-pt+sim w_mean 0": 0.386001, "KD-pt+sim top1 1": 30.5556, "KD-pt+sim w_mean 1": 0.403957,
    "KD top1 0": 30.5556, "KD w_mean 0": 0.390216, "KD top1 1": 13.8889, "KD w_mean 1": 0.406526,
}  # fmt: skip
