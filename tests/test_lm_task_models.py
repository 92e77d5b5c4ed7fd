"""The `lm` task's perplexity against a hand computation, and the language models."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from kdlab.data.base import DataBundle, Split
from kdlab.engine.evaluation import evaluate
from kdlab.errors import KdlabError
from kdlab.models.lm_base import output_embedding_of
from kdlab.registry import MODELS
from kdlab.tasks import get_task
from kdlab.tasks import language_model

V, T = 5, 3
# Fixed logits for 2 sequences of 3 tokens; the "model" ignores its input and returns them.
LOGITS = np.array(
    [
        [[2.0, 0.0, 0.0, -1.0, 0.5], [0.0, 1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 3.0, 0.0, -2.0]],
        [[0.0, 0.0, 0.0, 0.0, 0.0], [-1.0, 2.0, 0.5, 0.5, 0.0], [0.3, 0.1, 0.2, 4.0, 1.0]],
    ]
)
Y = np.array([[0, 2, 2], [4, 1, 0]])


class Fixed(nn.Module):
    def forward(self, x):
        return torch.tensor(LOGITS, dtype=torch.float32)[x[:, 0]]


def bundle():
    x = torch.tensor([[0, 0, 0], [1, 1, 1]])
    s = Split({"x": x, "y": torch.tensor(Y)})
    return DataBundle(train=s, val=s, test=s, num_classes=V, input_shape=(T,), task="lm", model_args={"vocab_size": V})


def test_perplexity_and_accuracy_by_hand(monkeypatch):
    nll = []
    correct = 0
    for b in range(2):
        for t in range(T):
            z = LOGITS[b, t]
            nll.append(-(z[Y[b, t]] - math.log(sum(math.exp(v) for v in z))))
            correct += int(np.argmax(z) == Y[b, t])
    data = bundle()
    task = get_task(data)
    assert task.primary_metric == "ppl" and not task.higher_is_better
    assert task.better(10.0, 12.0) and not task.better(12.0, 10.0)
    for elements in (10**9, 1):  # one slice, or one sequence per slice: same sums
        monkeypatch.setattr(language_model, "EVAL_LOGIT_ELEMENTS", elements)
        for bs in (1, 2):
            m = evaluate(Fixed(), data.test, task, batch_size=bs)
            assert m["loss"] == pytest.approx(np.mean(nll), rel=1e-6)
            assert m["ppl"] == pytest.approx(math.exp(np.mean(nll)), rel=1e-6)
            assert m["acc"] == pytest.approx(100 * correct / 6)
    # the training loss (the `ce` method on token logits) is the same mean token NLL
    from kdlab.knowledge.outputs import Outputs
    from kdlab.methods.base import MethodContext
    from kdlab.methods.supervised import CE

    got = CE(CE.Params(), MethodContext(num_classes=V, student=None, teachers=[], train_size=1, epochs=1, device=None))({"y": torch.tensor(Y)}, Outputs(logits=torch.tensor(LOGITS, dtype=torch.float32)), [])
    assert got["ce"].item() == pytest.approx(np.mean(nll), rel=1e-6)


@pytest.mark.parametrize("name", ["lstm_lm", "transformer_lm"])
@pytest.mark.parametrize("tie", [True, False])
def test_lm_shapes_and_tying(name, tie):
    torch.manual_seed(0)
    m = MODELS.get(name).obj(num_classes=50, input_shape=(7,), vocab_size=50, tie_weights=tie)
    x = torch.randint(0, 50, (3, 7))
    out = m(x)
    assert out.shape == (3, 7, 50)
    m.eval()
    assert torch.allclose(m.classify(m.embed(x)), m(x))
    assert (m.fc.weight is m.embedding.weight) == tie
    assert output_embedding_of(m).shape == (50, m.feat_dim)


def test_lstm_untied_sizes_and_tied_projection():
    m = MODELS.get("lstm_lm").obj(num_classes=20, input_shape=(4,), vocab_size=20, emb_dim=8, hidden=12, tie_weights=True)
    assert isinstance(m.proj, nn.Linear) and m.fc.weight.shape == (20, 8)
    m = MODELS.get("lstm_lm").obj(num_classes=20, input_shape=(4,), vocab_size=20, emb_dim=8, hidden=12, tie_weights=False)
    assert m.fc.weight.shape == (20, 12)


def test_transformer_is_causal():
    torch.manual_seed(0)
    m = MODELS.get("transformer_lm").obj(num_classes=30, input_shape=(8,), vocab_size=30, dropout=0.0).eval()
    x = torch.randint(0, 30, (2, 8))
    x2 = x.clone()
    x2[:, 5:] = (x2[:, 5:] + 1) % 30
    a, b = m(x), m(x2)
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-6)  # the past does not see the future
    assert not torch.allclose(a[:, 5:], b[:, 5:])
    with pytest.raises(KdlabError, match="max_len"):
        m(torch.zeros(1, 9, dtype=torch.long))


def test_lm_models_need_text_data():
    with pytest.raises(KdlabError, match="vocab_size"):
        MODELS.get("lstm_lm").obj(num_classes=10, input_shape=(64,))
    with pytest.raises(KdlabError, match="divisible"):
        MODELS.get("transformer_lm").obj(num_classes=10, input_shape=(4,), vocab_size=10, d_model=10, nhead=4)
    with pytest.raises(KdlabError, match="output embedding"):
        output_embedding_of(nn.Sequential(nn.Linear(2, 2)))
