"""kdlab.api.distill for per-token tasks: a Hugging Face BERT token classifier (built from a
config, nothing downloaded) distilled into a smaller one from tensors or from a DataLoader of
Hugging Face collator batches (input_ids / labels / attention_mask, lengths differing per batch)."""

import pytest
import torch
from torch.utils.data import DataLoader

from kdlab import api
from kdlab.errors import KdlabError

BERT = {"model_type": "bert", "vocab_size": 20, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 16, "num_labels": 3}
SMALL = {**BERT, "hidden_size": 16, "num_hidden_layers": 1, "intermediate_size": 32}
FAST = dict(epochs=2, lr=0.01, batch_size=16, device="cpu", progress=False, task="token_classification")


def _model(cfg, seed):
    from transformers import AutoConfig, AutoModelForTokenClassification

    torch.manual_seed(seed)
    return AutoModelForTokenClassification.from_config(AutoConfig.for_model(**cfg))


def _rows(n, seed):
    """Sentences of 4..10 tokens; a token's tag is (its id + the previous id) mod 3, so it needs the
    context; token 1 ([CLS]-like) is not scored."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        t = int(torch.randint(4, 11, (), generator=g))
        x = torch.cat([torch.tensor([1]), torch.randint(2, 20, (t - 1,), generator=g)])
        y = (x + x.roll(1)) % 3
        y[0] = -100
        rows.append((x, y))
    return rows


def _padded(rows, width=10):
    """(x, y, mask) tensors padded to `width`: x 0, y -100, mask 0."""
    x = torch.zeros(len(rows), width, dtype=torch.long)
    y = torch.full((len(rows), width), -100)
    m = torch.zeros(len(rows), width, dtype=torch.long)
    for i, (a, b) in enumerate(rows):
        x[i, :len(a)], y[i, :len(b)], m[i, :len(a)] = a, b, 1
    return x, y, m


def _collated(rows, size):
    """What a Hugging Face DataCollatorForTokenClassification gives: dict batches padded to their own longest row."""
    batches = []
    for i in range(0, len(rows), size):
        part = rows[i:i + size]
        x, y, m = _padded(part, max(len(a) for a, _ in part))
        batches.append({"input_ids": x, "labels": y, "attention_mask": m})
    return DataLoader(batches, batch_size=None)


@pytest.fixture(scope="module")
def splits():
    return _rows(96, 0), _rows(32, 1), _rows(32, 2)


@pytest.fixture(scope="module")
def teacher(splits):
    train, val, test = (_padded(r) for r in splits)
    return api.distill(None, _model(BERT, 0), train, val, test, methods="ce", **{**FAST, "epochs": 4}).student


def _accuracy(model, x, y, m):
    """Token accuracy over scored (label != -100), unpadded positions, counted here."""
    with torch.no_grad():
        pred = model.eval()(input_ids=x, attention_mask=m).logits.argmax(-1)
    keep = (y != -100) & m.bool()
    return 100.0 * float((pred[keep] == y[keep]).sum()) / float(keep.sum())


def test_token_student_distils_from_tensors_and_its_accuracy_is_counted_over_scored_tokens(splits, teacher):
    train, val, test = (_padded(r) for r in splits)
    out = api.distill(teacher, _model(SMALL, 1), train, val, test, methods=["ce", {"name": "kd", "tau": 2}], **FAST)
    assert out.history[-1]["train_kd"] > 0  # the teacher was read
    assert out.summary["test_acc"] == pytest.approx(_accuracy(out.student, *test), abs=1e-9)
    ce = api.distill(None, _model(SMALL, 1), train, val, test, methods="ce", **FAST)
    assert ce.history[-1]["train_total"] != out.history[-1]["train_total"]


def test_collator_batches_of_different_lengths_equal_padded_tensors(splits, teacher):
    """HF names and per-batch padding are read as the same tokens: same history, same weights."""
    ref = api.distill(teacher, _model(SMALL, 1), *(_padded(r) for r in splits), methods=["ce", "kd"], **FAST)
    got = api.distill(teacher, _model(SMALL, 1), *(_collated(r, 8) for r in splits), methods=["ce", "kd"], **FAST)
    assert [h["train_total"] for h in got.history] == pytest.approx([h["train_total"] for h in ref.history], rel=1e-6)
    assert got.summary["test_acc"] == ref.summary["test_acc"]


def test_token_inputs_that_do_not_fit_are_refused_in_one_line(splits):
    x, y, m = _padded(splits[0])
    cases = [
        ((x, y[:, 0]), {}, "y must be (N, T) tags per token"),
        ((x, y[:, :5]), {}, "one label per token"),
        ((x, y, m[:, :5]), {}, "attention_mask (96, 5) must match y"),
        ((x, torch.where(y == 2, 7, y)), {"num_classes": 3}, "labels must lie in 0..2 (or -100"),
    ]
    for data, extra, words in cases:
        with pytest.raises(KdlabError) as e:
            api.distill(None, _model(SMALL, 1), data, methods="ce", **extra, **FAST)
        assert words in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(KdlabError) as e:
        api.distill(None, _model(SMALL, 1), (x, y, m), (x, y), methods="ce", **FAST)
    assert "attention_mask for every split or for none" in str(e.value)
    with pytest.raises(KdlabError) as e:
        api.distill(None, _model(SMALL, 1), (x, torch.full_like(y, -100)), methods="ce", **FAST)
    assert "every label is -100" in str(e.value)
