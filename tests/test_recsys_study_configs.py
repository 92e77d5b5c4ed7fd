"""The built-in ranking comparison is split over five configs (meant to take under 10 minutes each): they
must describe one study - same data, teacher, student, training recipe and seeds, so the
teacher trains once and is reused by key, and every table carries the same scratch baseline."""

from pathlib import Path

from kdlab.config.load import load_config

CONFIGS = ["synthetic_compare", "synthetic_rrd_draws", "synthetic_de", "synthetic_de_fixed_tau", "synthetic_pckd"]
ROOT = Path(__file__).parents[1] / "configs" / "recsys"


def test_split_ranking_study_shares_everything_but_its_arms():
    exps = {c: load_config(ROOT / f"{c}.yaml") for c in CONFIGS}
    shared = lambda e: e.model_dump(include={"seeds", "data", "teacher", "student", "train", "pipeline"})  # noqa: E731
    first = shared(exps[CONFIGS[0]])
    assert all(shared(e) == first for e in exps.values())
    assert len(first["seeds"]) >= 3
    arms = [set(e.method_sets()) for e in exps.values()]
    assert all("scratch" in a for a in arms)
    assert all(e.method_sets()["scratch"] == exps[CONFIGS[0]].method_sets()["scratch"] for e in exps.values())
    others = [a - {"scratch"} for a in arms]
    assert sum(len(a) for a in others) == len(set().union(*others))  # each arm runs in one config only
    assert set().union(*others) == {"rd", "cd", "rrd", "rrd_batch", "de", "de_fixed_tau", "pckd_hybrid"}
