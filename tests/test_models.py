"""Model zoo: every registered builder honours the zoo contract (shapes, stage bookkeeping,
features/classify/embed) and the CIFAR models match the published parameter counts."""

from __future__ import annotations

import copy

import pytest
import torch
from pydantic import ValidationError, validate_call
from torch import nn

from kdlab.errors import KdlabError
from kdlab.registry import MODELS

CIFAR = (3, 32, 32)
SHAPES = {
    "mlp": (64,),
    "cnn1d": (1, 40),
    "cnn2d": (1, 8, 8),
    "resnet18": (3, 64, 64),
    "resnet34": (3, 64, 64),
    "resnet50": (3, 64, 64),
}
EXPECTED = [
    "mlp", "cnn1d", "cnn2d",
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
    "resnet8x4", "resnet32x4",
    "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2",
    "vgg8", "vgg11", "vgg13", "vgg16",
    "mobilenetv2", "shufflenetv1", "shufflenetv2",
    "resnet18", "resnet34", "resnet50",
]  # fmt: skip
# Parameter counts for 100 classes (RepDistiller / mdistiller tables), in millions.
PARAMS_M = {
    "resnet8": 0.08, "resnet20": 0.28, "resnet32": 0.47, "resnet56": 0.86, "resnet110": 1.74,
    "resnet8x4": 1.23, "resnet32x4": 7.43,
    "wrn_16_2": 0.70, "wrn_40_2": 2.26,
    "vgg8": 3.96, "vgg13": 9.46,
    "mobilenetv2": 0.81, "shufflenetv1": 0.95, "shufflenetv2": 1.36,
    "resnet50": 23.7,
}  # fmt: skip

_CACHE: dict[str, nn.Module] = {}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Batches of 2 gain nothing from intra-op threads, and on a busy 2-core machine the
    # thread pool's spin-waiting makes these tiny forwards up to 100x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
    _CACHE.clear()


def build(name: str, num_classes: int = 100, **params) -> nn.Module:
    return MODELS.get(name).obj(num_classes=num_classes, input_shape=SHAPES.get(name, CIFAR), **params)


def model(name: str) -> nn.Module:
    """One eval-mode, 100-class instance per name, shared by the tests."""
    if name not in _CACHE:
        torch.manual_seed(0)
        _CACHE[name] = build(name).eval()
    return _CACHE[name]


def sample(name: str, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, *SHAPES.get(name, CIFAR), generator=torch.Generator().manual_seed(1))


def test_all_expected_models_registered():
    assert set(EXPECTED) <= set(MODELS.names())
    for name in EXPECTED:
        entry = MODELS.get(name)
        assert entry.description and "\n" not in entry.description
        assert "arXiv:" in entry.reference or "doi:" in entry.reference


# The classification zoo; task-specific models (ranking, LM, subclass wrapper) have their own tests.
@pytest.mark.parametrize("name", sorted(EXPECTED))
@torch.no_grad()
def test_contract(name):
    m = model(name)
    x = sample(name)
    logits = m(x)
    assert logits.shape == (2, 100)
    assert torch.isfinite(logits).all()

    assert isinstance(m.fc, nn.Linear) and m.fc.in_features == m.feat_dim
    assert torch.equal(logits, m.classify(m.features(x)))

    modules = dict(m.named_modules())
    assert m.stage_names and m.hint_points
    for path in m.stage_names + m.hint_points:
        assert path in modules, path
    assert len(m.stage_channels) == len(m.stage_names)

    outs = m.stage_outputs(x)
    for i, out in enumerate(outs):
        assert out.shape[0] == 2 and out.shape[1] == m.stage_channels[i], (i, out.shape)
    for i in {0, len(outs) // 2, len(outs) - 1}:
        assert torch.equal(m.features(x, upto=i), outs[i])
    assert torch.equal(m.features(x, upto=-1), outs[-1])
    # Resuming from a stage output gives the same result (used when growing a student).
    assert torch.equal(m.features(outs[0], start=1), outs[-1])

    emb = m.embed(x)
    assert emb.shape == (2, m.feat_dim)
    assert torch.equal(m.fc(emb), logits)

    # Hint points are tappable with forward hooks and come out shallow to deep.
    seen = []
    hooks = [modules[p].register_forward_hook(lambda _m, _i, o: seen.append(o)) for p in m.hint_points]
    m(x)
    for h in hooks:
        h.remove()
    assert len(seen) == len(m.hint_points)
    assert all(isinstance(t, torch.Tensor) and t.shape[0] == 2 for t in seen)


@pytest.mark.parametrize("name", sorted(PARAMS_M))
def test_param_counts(name):
    n = sum(p.numel() for p in model(name).parameters()) / 1e6
    assert abs(n - PARAMS_M[name]) / PARAMS_M[name] < 0.05, n


@pytest.mark.parametrize("name", ["mlp", "cnn1d", "cnn2d", "resnet8", "wrn_16_1", "mobilenetv2", "shufflenetv2"])
@torch.no_grad()
def test_other_num_classes(name):
    m = build(name, num_classes=7).eval()
    assert m(sample(name)).shape == (2, 7)
    assert m.fc.out_features == 7


def test_unknown_kwarg_rejected():
    builder = validate_call(MODELS.get("resnet20").obj)
    with pytest.raises(ValidationError):
        builder(num_classes=10, input_shape=[3, 32, 32], width=2)
    with pytest.raises(TypeError):
        MODELS.get("mlp").obj(num_classes=10, input_shape=(64,), hiden=[8])


def test_params_validated_and_applied():
    builder = validate_call(MODELS.get("mlp").obj)
    m = builder(num_classes=3, input_shape=[4, 4], hidden=["16", 8], dropout=0.1)
    assert m.stage_channels == [16, 16, 8] and m.hint_points == ["blocks.0", "blocks.1"]
    assert any(isinstance(x, nn.Dropout) for x in m.modules())
    with pytest.raises(ValidationError):
        builder(num_classes=3, input_shape=[16], hidden="wide")
    with pytest.raises(KdlabError):
        builder(num_classes=3, input_shape=[16], dropout=1.5)
    c = validate_call(MODELS.get("cnn1d").obj)(num_classes=3, input_shape=[40], channels=[8, 16], kernel_size=3)
    assert c.stage_channels == [1, 8, 16]
    assert c.eval()(torch.randn(2, 40)).shape == (2, 3)  # (L,) signals get a channel axis


def test_image_models_reject_wrong_rank():
    for name in ["resnet8", "wrn_16_1", "vgg8", "mobilenetv2", "shufflenetv2", "resnet18"]:
        with pytest.raises(KdlabError):
            MODELS.get(name).obj(num_classes=10, input_shape=(64,))


@torch.no_grad()
def test_small_and_odd_inputs():
    # Adaptive pooling / ceil-mode pools: models run on sizes other than their native one.
    for name, shape in [("vgg8", (3, 8, 8)), ("mobilenetv2", (3, 20, 20)), ("shufflenetv1", (1, 28, 28)),
                        ("resnet50", (3, 32, 32)), ("wrn_16_1", (3, 40, 24)), ("cnn2d", (1, 28, 28))]:
        m = MODELS.get(name).obj(num_classes=5, input_shape=shape).eval()
        assert m(torch.randn(2, *shape)).shape == (2, 5), name
    m = MODELS.get("resnet50").obj(num_classes=5, input_shape=(3, 32, 32), cifar_stem=True).eval()
    assert m.features(torch.randn(2, 3, 32, 32)).shape == (2, 2048, 4, 4)


def test_train_step_and_deepcopy():
    m = build("resnet8", num_classes=10).train()
    x = sample("resnet8", batch=4)
    loss = m(x).logsumexp(1).mean()
    loss.backward()
    assert m.fc.weight.grad is not None and m.stem[0].weight.grad is not None
    clone = copy.deepcopy(m).eval()
    m.eval()
    with torch.no_grad():
        assert torch.equal(clone(x), m(x))
        assert torch.equal(clone.features(x, upto=1), m.features(x, upto=1))
