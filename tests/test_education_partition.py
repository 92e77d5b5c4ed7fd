import numpy as np
import pytest

from kdlab.errors import KdlabError
from kdlab.pipelines.education.partition import confusion_matrix, equal_sizes, partition_classes


def _covers(groups, n):
    flat = [c for g in groups for c in g]
    return sorted(flat) == list(range(n)) and len(flat) == n


def test_index_partition_matches_the_reference_sizes():
    groups = partition_classes("index", 100, 3)
    assert [len(g) for g in groups] == [33, 33, 34]
    assert groups[0] == list(range(33)) and groups[2] == list(range(66, 100))
    assert _covers(groups, 100)


@pytest.mark.parametrize("n,g", [(10, 3), (7, 7), (20, 4), (5, 1)])
def test_every_strategy_covers_every_class_once(n, g):
    sup = [c % g for c in range(n)] if n >= g else None
    rng = np.random.default_rng(0)
    conf = rng.integers(0, 5, size=(n, n)) + np.eye(n, dtype=int) * 50
    for strategy in ("index", "random", "superclass", "confusion"):
        groups = partition_classes(strategy, n, g, seed=3, superclass=sup, confusion=conf)
        assert len(groups) == g and _covers(groups, n), strategy
        assert all(len(x) > 0 for x in groups)


def test_random_partition_is_stable_under_its_seed_and_changes_with_it():
    a = partition_classes("random", 30, 3, seed=5)
    assert a == partition_classes("random", 30, 3, seed=5)
    assert a != partition_classes("random", 30, 3, seed=6)
    assert [len(g) for g in a] == equal_sizes(30, 3)


def test_superclass_partition_keeps_superclasses_together():
    sup = [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    groups = partition_classes("superclass", 10, 2, superclass=sup)
    for s in set(sup):
        members = {c for c, t in enumerate(sup) if t == s}
        assert sum(bool(members & set(g)) for g in groups) == 1
    # balanced by class count: 10 classes in 2 groups of 5
    assert sorted(len(g) for g in groups) == [5, 5]


def test_confusion_partition_recovers_blocks_of_confused_classes():
    # classes {0, 4, 7}, {1, 3, 8} and {2, 5, 6, 9} are confused among themselves only
    blocks = [[0, 4, 7], [1, 3, 8], [2, 5, 6, 9]]
    conf = np.eye(10, dtype=int) * 100
    for b in blocks:
        for i in b:
            for j in b:
                if i != j:
                    conf[i, j] = 7
    groups = partition_classes("confusion", 10, 3, sizes=[4, 3, 3], confusion=conf)
    assert sorted(map(tuple, groups)) == sorted(map(tuple, blocks))


def test_confusion_matrix_counts_true_by_predicted():
    import torch

    logits = torch.tensor([[2.0, 0, 0], [0, 3.0, 0], [0, 3.0, 0], [0, 0, 1.0]])
    y = torch.tensor([0, 1, 2, 2])
    m = confusion_matrix(logits, y, 3)
    assert m.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]


def test_bad_partition_requests_are_clear_errors():
    with pytest.raises(KdlabError, match="hierarchy"):
        partition_classes("superclass", 10, 3)
    with pytest.raises(KdlabError, match="fewer than groups"):
        partition_classes("superclass", 4, 3, superclass=[0, 0, 1, 1])
    with pytest.raises(KdlabError, match="at most 3 groups"):
        partition_classes("index", 3, 4)
    with pytest.raises(KdlabError, match="summing"):
        partition_classes("index", 10, 3, sizes=[3, 3, 3])
    with pytest.raises(KdlabError, match="confusion matrix"):
        partition_classes("confusion", 10, 3)
