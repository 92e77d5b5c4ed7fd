"""Interactions files (u.data, ratings.dat, CSV), k-core filtering, the per-user split, errors."""

import numpy as np
import pytest

from kdlab.data.recsys_interactions import interactions, parse_interactions
from kdlab.data.recsys_split import k_core, per_user_split
from kdlab.data.recsys_synthetic import recsys_synthetic
from kdlab.errors import KdlabError


def grid(n_users=12, n_items=15, per_user=10, seed=0):
    rng = np.random.default_rng(seed)
    return [(u, int(i)) for u in range(n_users) for i in rng.choice(n_items, per_user, replace=False)]


def write(path, rows, fmt):
    lines = [fmt.format(u=u + 100, i=i + 7, r=4, t=881250949 + k) for k, (u, i) in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.parametrize(
    "name,fmt,header",
    [("u.data", "{u}\t{i}\t{r}\t{t}", ""), ("ratings.dat", "{u}::{i}::{r}::{t}", ""), ("x.csv", "{u},{i}", "user,item\n")],
)
def test_formats_parse_to_the_same_interactions(tmp_path, name, fmt, header):
    rows = grid()
    p = write(tmp_path / name, rows, fmt)
    if header:
        (tmp_path / name).write_text(header + (tmp_path / name).read_text())
    users, items = parse_interactions(p)
    assert sorted(zip(users.tolist(), items.tolist())) == sorted((u + 100, i + 7) for u, i in rows)
    data = interactions(seed=0, path=p, k_core=3)
    assert data.task == "ranking" and data.model_args["num_users"] == 12
    # Every interaction lands in exactly one part; held-out items are never train items.
    n = len(data.train) + int((data.val["pos"] >= 0).sum()) + int((data.test["pos"] >= 0).sum())
    assert n == len(rows)


def test_min_rating_keeps_high_ratings(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("1,1,5\n1,2,2\n2,1,4\n")
    users, items = parse_interactions(str(p), min_rating=4)
    assert list(zip(users, items)) == [(1, 1), (2, 1)]


def test_missing_column(tmp_path):
    p = tmp_path / "u.data"
    p.write_text("1\t2\t3\t4\n5\n")
    with pytest.raises(KdlabError, match=r"line 2 has 1 column.*expected user, item"):
        parse_interactions(str(p))


def test_non_integer_ids(tmp_path):
    p = tmp_path / "u.data"
    p.write_text("1\t2\t3\t4\nalice\tbook\t3\t4\n")
    with pytest.raises(KdlabError, match=r"line 2: user and item ids must be integers, found 'alice' and 'book'"):
        parse_interactions(str(p))


def test_too_few_after_k_core(tmp_path):
    p = write(tmp_path / "u.data", grid(n_users=3, per_user=4), "{u}\t{i}\t{r}\t{t}")
    with pytest.raises(KdlabError, match=r"0 interactions remain after 10-core filtering \(from 12 rows, 3 users"):
        interactions(seed=0, path=p, k_core=10)


def test_missing_file():
    with pytest.raises(KdlabError, match="does not exist"):
        interactions(seed=0, path="/nonexistent/u.data")


def test_k_core_fixed_point():
    users = np.array([0, 0, 0, 1, 1, 1, 2, 2, 3])
    items = np.array([0, 1, 2, 0, 1, 2, 0, 3, 0])
    u, i = k_core(users, items, 2)
    # Item 3 (one interaction) goes, then user 2 has one left and goes, then user 3 too.
    assert sorted(zip(u.tolist(), i.tolist())) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    uc, ic = np.bincount(u), np.bincount(i)
    assert uc[uc > 0].min() >= 2 and ic[ic > 0].min() >= 2


def test_per_user_split_is_8_1_1_and_seeded():
    users = np.repeat(np.arange(5), 20)
    part = per_user_split(users, seed=3, val_fraction=0.1, test_fraction=0.1)
    for u in range(5):
        assert np.bincount(part[users == u], minlength=3).tolist() == [16, 2, 2]
    assert np.array_equal(part, per_user_split(users, 3, 0.1, 0.1))
    assert not np.array_equal(part, per_user_split(users, 4, 0.1, 0.1))


def top10_share(data):
    pop = np.sort(data.meta["item_popularity"].numpy())[::-1]
    return pop[: len(pop) // 10].sum() / pop.sum()


def test_synthetic_has_popularity_skew():
    data = recsys_synthetic(seed=0, users=300, items=200, pop_skew=1.0)
    assert top10_share(data) > 0.25  # the top 10% of items hold far more than 10% of the interactions
    # The skew is what pop_skew sets: weaker at the (taste-dominated) default, weakest at 0.
    shares = [top10_share(recsys_synthetic(seed=0, users=300, items=200, pop_skew=k)) for k in (0.0, 0.2)]
    assert shares[0] < shares[1] < top10_share(data)
    again = recsys_synthetic(seed=0, users=300, items=200, pop_skew=1.0)
    assert np.array_equal(data.train["item"].numpy(), again.train["item"].numpy())


def test_synthetic_defaults_are_the_documented_regime():
    import inspect

    defaults = {k: v.default for k, v in inspect.signature(recsys_synthetic).parameters.items()}
    # docs/recsys.md reports teacher, scratch and most-popular on exactly this regime.
    assert {k: defaults[k] for k in ("users", "items", "dim", "mean_interactions", "pop_skew", "temperature")} == {
        "users": 2000, "items": 1000, "dim": 64, "mean_interactions": 60.0, "pop_skew": 0.2, "temperature": 0.3}


def test_interactions_config_validates(tmp_path):
    from kdlab.config.schema import Experiment

    exp = Experiment(
        data={"name": "interactions", "params": {"path": str(tmp_path / "u.data"), "k_core": 5, "min_rating": 4}},
        teacher={"model": {"name": "bpr_mf", "params": {"dim": 64}}, "methods": [{"name": "bpr"}]},
        student={"name": "lightgcn", "params": {"dim": 20, "layers": 2}},
        methods=[{"name": "bpr"}, {"name": "pckd", "reg": "list", "Q": 5}],
    )
    assert exp.data.params["min_rating"] == 4.0
