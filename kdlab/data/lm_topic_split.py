"""A language-modelling split of a multi-document corpus that holds out whole documents
(topics) and drops held-out passages repeated elsewhere, so held-out perplexity measures
generalisation rather than recall of text seen in training.

A reference manual repeats itself (CPython's pydoc topics: `compound` holds every compound
statement's topic again, `specialnames` the data-model topics): a contiguous cut of such a text
leaves ~36% of the test 20-grams verbatim in the training part. Here documents go whole to
test, then val, in seeded order until each split holds its fraction of the corpus's tokens
(counted after the drop); a held-out paragraph (blank-line block) is dropped when at least
`near_duplicate` of its word 8-grams also occur in another document. `ngram_overlap` measures
what is left.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from kdlab.data.tokenizer import split_words
from kdlab.errors import KdlabError

SHINGLE = 8  # words per shingle for the near-duplicate test


def ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def ngram_overlap(train: list[str], heldout: list[str], n: int = 20) -> float:
    """Fraction of the held-out token n-grams that occur verbatim in the training tokens."""
    grams = ngrams(heldout, n)
    if not grams:
        return 0.0
    seen = set(ngrams(train, n))
    return sum(g in seen for g in grams) / len(grams)


def _paragraph_words(text: str, lowercase: bool) -> list[list[str]]:
    return [w for w in (split_words(p, lowercase) for p in text.split("\n\n")) if w]


def topic_split(docs: dict[str, str], seed: int, val_fraction: float, test_fraction: float,
                near_duplicate: float = 0.2, lowercase: bool = True) -> tuple[list[str], list[str], list[str], dict]:
    """(train, val, test) token lists and a record of which documents went where."""
    if not 0 < near_duplicate <= 1:
        raise KdlabError(f"near_duplicate is a fraction of a paragraph's 8-grams in (0, 1], got {near_duplicate}")
    names = sorted(docs)
    paras = {d: _paragraph_words(docs[d], lowercase) for d in names}
    owners: dict[tuple, set] = defaultdict(set)
    for d in names:
        for p in paras[d]:
            for g in ngrams(p, SHINGLE):
                owners[g].add(d)

    def repeated(d: str, p: list[str]) -> bool:
        grams = ngrams(p, SHINGLE)
        return bool(grams) and sum(len(owners[g] - {d}) > 0 for g in grams) / len(grams) >= near_duplicate

    kept = {d: [p for p in paras[d] if not repeated(d, p)] for d in names}
    total = sum(len(p) for d in names for p in paras[d])
    quota = {"test": test_fraction * total, "val": val_fraction * total}
    held: dict[str, list[str]] = {"test": [], "val": []}
    filled = {"test": 0, "val": 0}
    rest = []
    for k in np.random.default_rng(seed).permutation(len(names)):
        d = names[k]
        size = sum(len(p) for p in kept[d])
        to = next((s for s in ("test", "val") if filled[s] < quota[s]), None)
        if to is None or size == 0:
            rest.append(d)
            continue
        held[to].append(d)
        filled[to] += size
    train = [w for d in sorted(rest) for p in paras[d] for w in p]
    val, test = ([w for d in sorted(held[s]) for p in kept[d] for w in p] for s in ("val", "test"))
    record = {"val_docs": sorted(held["val"]), "test_docs": sorted(held["test"]),
              "dropped_paragraphs": sum(len(paras[d]) - len(kept[d]) for s in held.values() for d in s)}
    return train, val, test, record
