"""Class partitions: which classes each grade's group holds.

Every strategy returns a list of groups (lists of class ids, each sorted) that covers every
class exactly once. Group sizes follow `group_sizes`, or near-equal shares with the
remainder on the last groups (100 classes in 3 groups: 33/33/34, as in the reference).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from kdlab.errors import KdlabError

STRATEGIES = ("index", "random", "superclass", "confusion")


def equal_sizes(num_classes: int, groups: int) -> list[int]:
    if groups > num_classes:
        raise KdlabError(f"cannot split {num_classes} classes into {groups} groups; use at most {num_classes} groups")
    base, rem = divmod(num_classes, groups)
    return [base + (1 if i >= groups - rem else 0) for i in range(groups)]


def _chunk(order: Sequence[int], sizes: Sequence[int]) -> list[list[int]]:
    out, i = [], 0
    for s in sizes:
        out.append(sorted(int(c) for c in order[i : i + s]))
        i += s
    return out


def by_index(num_classes: int, sizes: Sequence[int]) -> list[list[int]]:
    return _chunk(range(num_classes), sizes)


def by_random(num_classes: int, sizes: Sequence[int], seed: int) -> list[list[int]]:
    return _chunk(np.random.default_rng(seed).permutation(num_classes).tolist(), sizes)


def by_superclass(superclass: Sequence[int], groups: int) -> list[list[int]]:
    """Whole superclasses per group, balanced by class count (largest superclass first to the
    group with the fewest classes; ties to the lower group), so related classes share a teacher."""
    members: dict[int, list[int]] = {}
    for c, s in enumerate(superclass):
        members.setdefault(int(s), []).append(c)
    if len(members) < groups:
        raise KdlabError(
            f"partition 'superclass': the data has {len(members)} superclasses, fewer than groups={groups}; "
            "use fewer groups or another partition"
        )
    out: list[list[int]] = [[] for _ in range(groups)]
    for s in sorted(members, key=lambda s: (-len(members[s]), s)):
        g = min(range(groups), key=lambda i: (len(out[i]), i))
        out[g].extend(members[s])
    return [sorted(g) for g in out]


def by_confusion(confusion: np.ndarray, sizes: Sequence[int]) -> list[list[int]]:
    """Groups of mutually confused classes, with exactly the given sizes.

    Similarity of classes i, j is the symmetric, row-normalised confusion (how often one is
    taken for the other). Each group starts from the remaining class most confused with the
    others and greedily adds the remaining class most similar on average to the group.
    """
    c = np.asarray(confusion, dtype=np.float64)
    n = c.shape[0]
    rates = c / np.maximum(c.sum(1, keepdims=True), 1.0)
    sim = rates + rates.T
    np.fill_diagonal(sim, 0.0)
    remaining = list(range(n))
    out = []
    for s in sizes:
        sub = sim[np.ix_(remaining, remaining)]
        seed = remaining[int(np.argmax(sub.sum(1)))]  # argmax: first (lowest id) on ties
        group = [seed]
        remaining.remove(seed)
        while len(group) < s:
            score = sim[np.ix_(remaining, group)].mean(1)
            pick = remaining[int(np.argmax(score))]
            group.append(pick)
            remaining.remove(pick)
        out.append(sorted(group))
    return out


def partition_classes(
    strategy: str,
    num_classes: int,
    groups: int,
    sizes: Optional[Sequence[int]] = None,
    seed: int = 0,
    superclass: Optional[Sequence[int]] = None,
    confusion: Optional[np.ndarray] = None,
) -> list[list[int]]:
    if strategy not in STRATEGIES:
        raise KdlabError(f"unknown partition '{strategy}'; choose one of {', '.join(STRATEGIES)}")
    if sizes is None:
        sizes = equal_sizes(num_classes, groups)
    elif sum(sizes) != num_classes or len(sizes) != groups:
        raise KdlabError(f"group_sizes {list(sizes)} must be {groups} sizes summing to the {num_classes} classes")
    if strategy == "index":
        return by_index(num_classes, sizes)
    if strategy == "random":
        return by_random(num_classes, sizes, seed)
    if strategy == "superclass":
        if superclass is None:
            raise KdlabError("partition 'superclass' needs data with a class hierarchy (bundle.superclass); "
                             "use partition: index, random or confusion")
        if len(superclass) != num_classes:
            raise KdlabError(f"superclass table has {len(superclass)} entries for {num_classes} classes")
        return by_superclass(superclass, groups)
    if confusion is None:
        raise KdlabError("partition 'confusion' needs a teacher's confusion matrix (the experiment's `teacher`)")
    return by_confusion(confusion, sizes)


def confusion_matrix(logits, y, num_classes: int) -> np.ndarray:
    """counts[true, predicted] from logits and labels (tensors)."""
    pred = logits.argmax(1).cpu().numpy()
    true = y.cpu().numpy()
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (true, pred), 1)
    return m
