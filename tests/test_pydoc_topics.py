"""The built-in text-classification dataset (paragraphs of CPython's docs labelled by the part
of the documentation they come from): a split with no near-duplicate across splits, labels
balanced enough, fixed-length token ids with a mask, the tokenizer fitted on train only."""

import numpy as np
import pytest
import torch

from kdlab.data.pydoc_topics import FAMILIES, near_duplicate_groups, paragraphs, pydoc_topics_dataset, shingles
from kdlab.data.text_corpus import pydoc_topic_texts
from kdlab.data.tokenizer import split_words


@pytest.fixture(scope="module")
def bundle():
    return pydoc_topics_dataset()


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b)


def test_no_paragraph_nearly_repeats_across_splits(bundle):
    texts = bundle.meta["texts"]
    assert not set(texts["train"]) & (set(texts["val"]) | set(texts["test"]))
    train = [shingles(t) for t in texts["train"]]
    index: dict = {}
    for i, s in enumerate(train):
        for g in s:
            index.setdefault(g, []).append(i)
    for t in texts["val"] + texts["test"]:
        s = shingles(t)
        near = {i for g in s for i in index.get(g, ())}
        assert max((_jaccard(s, train[i]) for i in near), default=0) < 0.5, t


def test_the_reference_repeats_itself_and_groups_catch_it():
    """`compound` repeats the `if` topic: the same paragraphs are kept once; a paragraph edited
    slightly is grouped with its original."""
    topics = pydoc_topic_texts()
    texts, _ = paragraphs({"if": topics["if"], "compound": topics["compound"]}, 12)
    assert len(texts) == len(set(texts))
    if_paragraphs, _ = paragraphs({"if": topics["if"]}, 12)
    assert set(if_paragraphs) <= set(texts)
    original = texts[0]
    edited = original.replace(" the ", " a ", 1) + " Indeed."
    groups = near_duplicate_groups([original, edited, "an unrelated paragraph about the debugger and its commands"], 0.5)
    assert groups[0] == groups[1] != groups[2]


def test_labels_are_balanced_enough_and_stratified(bundle):
    counts = {name: np.bincount(getattr(bundle, name)["y"].numpy(), minlength=len(FAMILIES))
              for name in ("train", "val", "test")}
    assert bundle.num_classes == len(FAMILIES) == 5 and bundle.class_names == list(FAMILIES)
    assert counts["train"].min() > 0 and counts["train"].max() <= 5 * counts["train"].min()
    total = sum(counts.values())
    for c in range(5):  # each class is split about 65/15/20 (whole groups move together)
        assert abs(counts["test"][c] / total[c] - 0.2) < 0.05 and abs(counts["val"][c] / total[c] - 0.15) < 0.05


def test_token_ids_mask_and_tokenizer(bundle):
    tok, pad = bundle.meta["tokenizer"], bundle.meta["pad_id"]
    assert pad == 2 and tok.itos[:3] == ["<unk>", "<eos>", "<pad>"] and len(tok) <= 4000
    assert bundle.model_args["vocab_size"] == len(tok) and bundle.input_shape == (64,)
    for split in (bundle.train, bundle.test):
        x, mask = split["x"], split["attention_mask"]
        assert x.shape[1] == 64 and torch.equal(mask, (x != pad).long())
        assert torch.all(mask[:, 0] == 1)  # no empty paragraph
        # padding only at the end: the mask never turns back on
        assert torch.all(mask[:, 1:] <= mask[:, :-1])
    text, ids = bundle.meta["texts"]["test"][0], bundle.test["x"][0]
    assert ids[: int(bundle.test["attention_mask"][0].sum())].tolist() == tok.encode(text)[:64]
    # Fitted on train only: a word seen only outside train is <unk>.
    train_words = {w for t in bundle.meta["texts"]["train"] for w in split_words(t)}
    unseen = [w for t in bundle.meta["texts"]["test"] for w in split_words(t) if w not in train_words]
    assert unseen and all(tok.encode(w)[0] == 0 for w in unseen[:20])


def test_same_seed_same_split_other_seed_other_split():
    a, b = pydoc_topics_dataset(max_per_class=10), pydoc_topics_dataset(max_per_class=10)
    c = pydoc_topics_dataset(seed=1, max_per_class=10)
    assert torch.equal(a.test["x"], b.test["x"]) and not torch.equal(a.test["x"], c.test["x"])
    assert np.bincount(a.train["y"].numpy()).tolist() == [10] * 5
