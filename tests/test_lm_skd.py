"""skd_nlp: soft targets from the output-embedding space, and its loss, against hand-checked
neighbour sets and a plain numpy loop."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from kdlab.errors import KdlabError
from kdlab.methods.base import MethodContext, Outputs
from kdlab.methods.self_nlp import SelfKnowledgeNLP, embedding_neighbours, skd_targets

# Five words in 2-D, unit directions chosen so that no two cosines tie; the rows get
# different norms, which must not matter (cosine similarity). Cosines by hand:
#   word 0: 1 -> .8, 2 -> -.6, 3 -> -1, 4 -> .28     neighbours (k=2): 1, 4
#   word 1: 0 -> .8, 2 -> 0, 3 -> -.8, 4 -> -.352    neighbours: 0, 2
#   word 2: 0 -> -.6, 1 -> 0, 3 -> .6, 4 -> -.936    neighbours: 3, 1
#   word 3: 0 -> -1, 1 -> -.8, 2 -> .6, 4 -> -.28    neighbours: 2, 4
#   word 4: 0 -> .28, 1 -> -.352, 2 -> -.936, 3 -> -.28   neighbours: 0, 3
DIRS = np.array([[1.0, 0.0], [0.8, 0.6], [-0.6, 0.8], [-1.0, 0.0], [0.28, -0.96]])
NORMS = np.array([1.0, 3.0, 0.5, 2.0, 5.0])
E = DIRS * NORMS[:, None]
V = 5
HAND_NEIGHBOURS_K2 = [[1, 4], [0, 2], [3, 1], [2, 4], [0, 3]]


def np_targets(y, k, tau):
    """Independent numpy: full V-vector q for gold y."""
    e = DIRS  # already unit rows
    cos = e @ e[y]
    others = [w for w in range(V) if w != y]
    nb = sorted(others, key=lambda w: -cos[w])[:k]
    q = np.zeros(V)
    for w in [y, *nb]:
        q[w] = math.exp(cos[w] / tau)
    return q / q.sum()


def t(a, dtype=torch.float32):
    return torch.tensor(a, dtype=dtype)


def test_neighbours_by_hand():
    nb = embedding_neighbours(t(E), 2)
    assert nb.tolist() == HAND_NEIGHBOURS_K2
    # chunked rows, and rows picked by index, give the same table
    assert torch.equal(embedding_neighbours(t(E), 2, chunk=2), nb)
    assert embedding_neighbours(t(E), 2, rows=torch.tensor([4, 2])).tolist() == [[0, 3], [3, 1]]


@pytest.mark.parametrize("tau", [0.5, 2.0])
def test_targets_match_hand_formula(tau):
    y = torch.tensor([0, 4, 0])
    support, q = skd_targets(t(E), y, k=2, tau=tau)
    assert support[0].tolist() == [0, 1, 4] and support[1].tolist() == [4, 0, 3]
    z = np.exp(np.array([1.0, 0.8, 0.28]) / tau)
    assert q[0].numpy() == pytest.approx(z / z.sum(), rel=1e-5)
    z = np.exp(np.array([1.0, 0.28, -0.28]) / tau)
    assert q[1].numpy() == pytest.approx(z / z.sum(), rel=1e-5)
    for i, yi in enumerate(y.tolist()):
        full = np.zeros(V)
        full[support[i].numpy()] = q[i].numpy()
        assert full == pytest.approx(np_targets(yi, 2, tau), rel=1e-5, abs=1e-7)


def test_targets_use_precomputed_table_identically():
    y = torch.tensor([0, 1, 2, 3, 4, 1])
    a = skd_targets(t(E), y, k=3, tau=0.3)
    b = skd_targets(t(E), y, k=3, tau=0.3, neighbours=embedding_neighbours(t(E), 3))
    assert torch.equal(a[0], b[0]) and torch.allclose(a[1], b[1])


class TiedStub(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, V)
        with torch.no_grad():
            self.fc.weight.copy_(t(E))


LOGITS = np.array(
    [[[1.0, 0.5, -0.5, 0.0, 2.0], [0.2, 0.1, 3.0, -1.0, 0.0]], [[0.0, 1.5, 0.5, 0.5, -2.0], [2.0, 2.0, 0.0, 1.0, 0.0]]]
)
Y = np.array([[0, 2], [4, 0]])


def np_loss(lam, k, tau):
    ce = h = 0.0
    for b in range(2):
        for i in range(2):
            z = LOGITS[b, i]
            logp = z - math.log(np.exp(z).sum())
            ce -= logp[Y[b, i]]
            h -= np.dot(np_targets(Y[b, i], k, tau), logp)
    return (1 - lam) * ce / 4, lam * h / 4


def make(epochs=4, **params):
    stub = TiedStub()
    ctx = MethodContext(num_classes=V, student=stub, teachers=[], train_size=4, epochs=epochs, device=torch.device("cpu"))
    return SelfKnowledgeNLP(SelfKnowledgeNLP.Params(**params), ctx), stub


@pytest.mark.parametrize("refresh", ["step", "epoch"])
def test_loss_matches_numpy(refresh):
    m, stub = make(lam=0.3, k=2, tau=0.5, refresh=refresh)
    logits = t(LOGITS).requires_grad_(True)
    out = m({"y": torch.tensor(Y)}, Outputs(logits=logits), [])
    ce, h = np_loss(0.3, 2, 0.5)
    assert out["skd_ce"].item() == pytest.approx(ce, rel=1e-5)
    assert out["skd"].item() == pytest.approx(h, rel=1e-5)
    # the targets are detached: no gradient reaches the output embedding through q
    (out["skd"] + out["skd_ce"]).backward()
    assert logits.grad is not None and stub.fc.weight.grad is None
    assert not any(isinstance(v, nn.Module) for v in m.children())  # the student is not a submodule


def test_lambda_ramp():
    m, _ = make(lam=0.6, k=2, tau=0.5, ramp_epochs=3)
    lams = []
    for e in range(5):
        m.on_epoch_start(e)
        lams.append(m.current_lambda())
    assert lams == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.6])
    m.on_epoch_start(0)
    out = m({"y": torch.tensor(Y)}, Outputs(logits=t(LOGITS)), [])
    assert out["skd"].item() == 0.0
    assert out["skd_ce"].item() == pytest.approx(np_loss(0.0, 2, 0.5)[0], rel=1e-5)
    m.on_epoch_start(2)
    out = m({"y": torch.tensor(Y)}, Outputs(logits=t(LOGITS)), [])
    assert out["skd"].item() == pytest.approx(np_loss(0.4, 2, 0.5)[1], rel=1e-5)


def test_epoch_table_is_rebuilt_each_epoch():
    m, stub = make(lam=0.5, k=2, tau=0.5, refresh="epoch")
    batch = {"y": torch.tensor(Y)}
    m.on_epoch_start(0)
    m(batch, Outputs(logits=t(LOGITS)), [])
    assert m._table[0].tolist() == [1, 4]
    with torch.no_grad():  # move word 2 next to word 0: the table must follow next epoch only
        stub.fc.weight[2] = t([1.0, 0.05])
    m(batch, Outputs(logits=t(LOGITS)), [])
    assert m._table[0].tolist() == [1, 4]
    m.on_epoch_start(1)
    m(batch, Outputs(logits=t(LOGITS)), [])
    assert m._table[0].tolist() == [2, 1]


def test_k_must_be_below_vocabulary():
    m, _ = make(k=5)
    with pytest.raises(KdlabError, match="k=5"):
        m({"y": torch.tensor(Y)}, Outputs(logits=t(LOGITS)), [])


def test_gold_mass_is_logged_per_epoch():
    """train_skd_gold_mass is the mean q_y over the epoch's tokens (numpy targets), and the
    whole target's gold mass is (1 - λ) + λ·q_y; nothing is logged while λ is still 0."""
    m, _ = make(lam=0.6, k=2, tau=0.5, ramp_epochs=2)
    batch = {"y": torch.tensor(Y)}
    m.on_epoch_start(0)
    m(batch, Outputs(logits=t(LOGITS)), [])
    assert m.epoch_metrics() == {} and m.summary_stats() == {}
    m.on_epoch_start(2)  # λ = 0.6
    m(batch, Outputs(logits=t(LOGITS)), [])
    m({"y": torch.tensor([[1]])}, Outputs(logits=t(LOGITS[:1, :1])), [])
    golds = [np_targets(y, 2, 0.5)[y] for y in [*Y.flatten().tolist(), 1]]
    want = float(np.mean(golds))
    got = m.epoch_metrics()
    assert got["skd_gold_mass"] == pytest.approx(want, rel=1e-5)
    assert got["skd_target_gold_mass"] == pytest.approx(1 - 0.6 * (1 - want), rel=1e-5)
    assert m.summary_stats() == got
    m.on_epoch_start(3)  # a new epoch starts a new mean
    m({"y": torch.tensor([[1]])}, Outputs(logits=t(LOGITS[:1, :1])), [])
    assert m.epoch_metrics()["skd_gold_mass"] == pytest.approx(np_targets(1, 2, 0.5)[1], rel=1e-5)
