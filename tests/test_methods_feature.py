"""Feature methods (fitnet, at, ab, ft, nst, ofd, vid, reviewkd) against plain numpy/loop
re-implementations of their formulas on fixed tensors, with their learned parts fixed; and an
end-to-end run of every feature and relation method through the real engine."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import truncnorm
from torch import nn

from kdlab.config.schema import Experiment
from kdlab.errors import KdlabError
from kdlab.methods.base import MethodContext, Outputs
from kdlab.methods.feature_hint import AB, AT, FT, NST, OFD, FitNet, gaussian_negative_mean
from kdlab.methods.feature_layers import ConvRegressor
from kdlab.methods.feature_review import ReviewKD, hcl_loss
from kdlab.methods.info_vid import VID

RNG = np.random.default_rng(0)


def ctx(teachers=(), student=None, n=8):
    return MethodContext(num_classes=3, student=student, teachers=list(teachers), train_size=n, epochs=1, device=torch.device("cpu"))


def t(a):
    return torch.tensor(np.asarray(a), dtype=torch.float32)


def run(m, s_feats, t_feats, batch=None):
    """Build on the tensors, fix BN to the identity (eval, eps 0), then evaluate the loss."""
    so, to = Outputs(features={k: t(v) for k, v in s_feats.items()}), [Outputs(features={k: t(v) for k, v in t_feats.items()})]
    m.build(so, to)
    return m, lambda: m.eval()(batch or {}, so, to)


def bn_identity(module):
    for b in module.modules():
        if isinstance(b, nn.BatchNorm2d):
            b.eps = 0.0
    module.eval()


def block_mean(x, h, w):
    """Average-pool (C, H, W) to (C, h, w) when H, W are multiples (adaptive pooling then is a block mean)."""
    c, H, W = x.shape
    return x.reshape(c, h, H // h, w, W // w).mean(axis=(2, 4))


# ------------------------------------------------------------------------------ FitNet
def test_fitnet_with_fixed_regressor_matches_numpy():
    S, T = RNG.normal(size=(2, 3, 4, 4)), RNG.normal(size=(2, 2, 4, 4))
    W = RNG.normal(size=(2, 3))
    m = FitNet(FitNet.Params(student_layers=["a"], teacher_layers=["b"]), ctx())
    m, loss = run(m, {"a": S}, {"b": T})
    reg = m.regressors[0]
    with torch.no_grad():
        reg.conv.weight.copy_(t(W)[:, :, None, None])
        reg.conv.bias.zero_()
    bn_identity(m)
    pred = np.maximum(np.einsum("oc,bchw->bohw", W, S), 0)
    assert loss()["fitnet"].item() == pytest.approx(np.mean((pred - T) ** 2), rel=1e-5)


@pytest.mark.parametrize("s_hw,t_hw,kind", [(8, 4, nn.Conv2d), (4, 8, nn.ConvTranspose2d), (6, 4, nn.Conv2d), (3, 8, nn.Conv2d)])
def test_fitnet_regressor_maps_onto_teacher_shape(s_hw, t_hw, kind):
    reg = ConvRegressor(torch.Size([2, 5, s_hw, s_hw]), torch.Size([2, 7, t_hw, t_hw]))
    assert isinstance(reg.conv, kind)
    assert reg(torch.randn(2, 5, s_hw, s_hw)).shape == (2, 7, t_hw, t_hw)


# --------------------------------------------------------------------------------- AT
def at_numpy(S, T, p):
    if S.shape[2] > T.shape[2]:
        S = np.stack([block_mean(s, *T.shape[2:]) for s in S])
    total = 0.0
    for b in range(len(S)):
        a_s = (np.abs(S[b]) ** p).mean(0).ravel()
        a_t = (np.abs(T[b]) ** p).mean(0).ravel()
        a_s, a_t = a_s / np.linalg.norm(a_s), a_t / np.linalg.norm(a_t)
        total += ((a_s - a_t) ** 2).sum()
    return total / (len(S) * a_s.size)


@pytest.mark.parametrize("p", [2.0, 1.0])
def test_at_matches_numpy_over_two_pairs_of_different_sizes(p):
    S1, T1 = RNG.normal(size=(3, 4, 4, 4)), RNG.normal(size=(3, 6, 2, 2))  # student map larger: pooled
    S2, T2 = RNG.normal(size=(3, 2, 2, 2)), RNG.normal(size=(3, 5, 2, 2))
    m = AT(AT.Params(p=p, student_layers=["a", "c"], teacher_layers=["b", "d"]), ctx())
    _, loss = run(m, {"a": S1, "c": S2}, {"b": T1, "d": T2})
    assert loss()["at"].item() == pytest.approx(at_numpy(S1, T1, p) + at_numpy(S2, T2, p), rel=1e-5)


# --------------------------------------------------------------------------------- AB
def ab_numpy(S, T, margin):
    total = 0.0
    for s, tt in zip(S.ravel(), T.ravel()):
        if tt > 0:
            total += (s - margin) ** 2 if s <= margin else 0.0
        else:
            total += (s + margin) ** 2 if s > -margin else 0.0
    return total


def test_ab_with_identity_connectors_matches_loop():
    S1, T1 = RNG.normal(size=(2, 3, 4, 4)), np.maximum(RNG.normal(size=(2, 3, 4, 4)), 0)
    S2, T2 = RNG.normal(size=(2, 2, 2, 2)), np.maximum(RNG.normal(size=(2, 2, 2, 2)), 0)
    m = AB(AB.Params(margin=0.5, student_layers=["a", "c"], teacher_layers=["b", "d"]), ctx())
    m, loss = run(m, {"a": S1, "c": S2}, {"b": T1, "d": T2})
    with torch.no_grad():
        for c in m.connectors:
            c.conv.weight.copy_(torch.eye(c.conv.weight.shape[0])[:, :, None, None])
    bn_identity(m)
    expected = (0.5 * ab_numpy(S1, T1, 0.5) + 1.0 * ab_numpy(S2, T2, 0.5)) / 2 * 3 / 1000
    assert loss()["ab"].item() == pytest.approx(expected, rel=1e-5)


# --------------------------------------------------------------------------------- FT
def test_ft_with_identity_paraphraser_and_translator_matches_numpy():
    S, T = RNG.normal(size=(2, 3, 2, 2)), RNG.normal(size=(2, 3, 2, 2))
    m = FT(FT.Params(rate=1.0, student_layers=["a"], teacher_layers=["b"]), ctx())
    m, loss = run(m, {"a": S}, {"b": T})
    m.paraphraser.encoder, m.paraphraser.decoder, m.translator = nn.Identity(), nn.Identity(), nn.Identity()
    fs = S.reshape(2, -1) / np.linalg.norm(S.reshape(2, -1), axis=1, keepdims=True)
    ft = T.reshape(2, -1) / np.linalg.norm(T.reshape(2, -1), axis=1, keepdims=True)
    out = loss()
    assert out["ft"].item() == pytest.approx(np.abs(fs - ft).mean(), rel=1e-5)
    assert out["ft_rec"].item() == pytest.approx(0.0, abs=1e-7)  # identity autoencoder reconstructs exactly


def test_ft_reconstruction_trains_only_the_paraphraser():
    S, T = torch.randn(2, 3, 2, 2, requires_grad=True), torch.randn(2, 4, 2, 2)
    m = FT(FT.Params(student_layers=["a"], teacher_layers=["b"]), ctx())
    so, to = Outputs(features={"a": S}), [Outputs(features={"b": T})]
    m.build(so, to)
    m(None, so, to)["ft_rec"].backward()
    assert S.grad is None and m.paraphraser.encoder[0].weight.grad is not None


# -------------------------------------------------------------------------------- NST
def nst_numpy(S, T):
    out = 0.0
    for s, tt in zip(S, T):
        s = s.reshape(len(s), -1)
        tt = tt.reshape(len(tt), -1)
        s = s / np.linalg.norm(s, axis=1, keepdims=True)
        tt = tt / np.linalg.norm(tt, axis=1, keepdims=True)
        k = lambda a, b: np.mean([(x @ y) ** 2 for x in a for y in b])  # noqa: E731
        out += k(tt, tt) + k(s, s) - 2 * k(s, tt)
    return out / len(S)


def test_nst_matches_loop_mmd_with_different_channel_counts():
    S, T = RNG.normal(size=(2, 3, 4, 4)), RNG.normal(size=(2, 5, 2, 2))
    m = NST(NST.Params(student_layers=["a"], teacher_layers=["b"]), ctx())
    _, loss = run(m, {"a": S}, {"b": T})
    Sp = np.stack([block_mean(s, 2, 2) for s in S])
    assert loss()["nst"].item() == pytest.approx(nst_numpy(Sp, T), rel=1e-4)


# -------------------------------------------------------------------------------- OFD
def test_ofd_margin_is_the_truncated_gaussian_mean():
    mean, std = np.array([0.5, -1.0, 2.0, 0.0, 5.0]), np.array([1.0, 0.5, 3.0, 2.0, 1.0])
    got = gaussian_negative_mean(t(mean), t(std)).numpy()
    for i in range(4):  # E[x | x < 0]; the last channel has P(x<0) < 0.001 -> -3 std by the paper's rule
        expected = truncnorm.mean(-np.inf, (0 - mean[i]) / std[i], loc=mean[i], scale=std[i])
        assert got[i] == pytest.approx(expected, rel=1e-4)
    assert got[4] == pytest.approx(-3.0)


def test_ofd_partial_l2_with_margin_from_teacher_bn_matches_loop():
    teacher = nn.Sequential(nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.ReLU()))
    with torch.no_grad():
        teacher[0][1].weight.copy_(t([1.0, 2.0]))
        teacher[0][1].bias.copy_(t([0.5, -1.0]))
    margin = [truncnorm.mean(-np.inf, -mu / sd, loc=mu, scale=sd) for mu, sd in [(0.5, 1.0), (-1.0, 2.0)]]
    S, T = RNG.normal(size=(3, 2, 2, 2)), np.maximum(RNG.normal(size=(3, 2, 2, 2)), 0)
    m = OFD(OFD.Params(student_layers=["a"], teacher_layers=["0"]), ctx([teacher]))
    m, loss = run(m, {"a": S}, {"0": T})
    with torch.no_grad():
        m.connectors[0].conv.weight.copy_(torch.eye(2)[:, :, None, None])
    bn_identity(m)
    total = 0.0
    for b, c, i, j in np.ndindex(*S.shape):
        target = T[b, c, i, j] if T[b, c, i, j] > 0 else margin[c]
        s = S[b, c, i, j]
        if s > target or target > 0:
            total += (s - target) ** 2
    assert loss()["ofd"].item() == pytest.approx(total / 3 * 1e-3, rel=1e-4)


# -------------------------------------------------------------------------------- VID
def test_vid_with_identity_mean_and_fixed_variance_matches_numpy():
    S, T = np.abs(RNG.normal(size=(2, 3, 2, 2))), RNG.normal(size=(2, 3, 2, 2))
    m = VID(VID.Params(student_layers=["a"], teacher_layers=["b"]), ctx())
    m, loss = run(m, {"a": S}, {"b": T})
    h = m.heads[0]
    var0 = torch.nn.functional.softplus(h.log_scale).detach().numpy() + 1e-5
    assert var0 == pytest.approx(np.full(3, 5.0), rel=1e-5)  # starts at init_var
    with torch.no_grad():
        for conv in h.mean[::2]:
            conv.weight.copy_(torch.eye(3)[:, :, None, None])
        h.log_scale.copy_(t([0.1, -1.0, 2.0]))
    var = np.log1p(np.exp([0.1, -1.0, 2.0])) + 1e-5
    expected = np.mean(0.5 * ((S - T) ** 2 / var[None, :, None, None] + np.log(var)[None, :, None, None]))
    assert loss()["vid"].item() == pytest.approx(expected, rel=1e-5)


# --------------------------------------------------------------------------- ReviewKD
def hcl_numpy(fs, ft):
    h = fs.shape[2]
    loss, w, tot = np.mean((fs - ft) ** 2), 1.0, 1.0
    for level in (4, 2, 1):
        if level >= h:
            continue
        w /= 2
        ps = np.stack([block_mean(x, level, level) for x in fs])
        pt = np.stack([block_mean(x, level, level) for x in ft])
        loss += w * np.mean((ps - pt) ** 2)
        tot += w
    return loss / tot


def test_hcl_matches_numpy_pyramid():
    fs, ft = RNG.normal(size=(2, 3, 8, 8)), RNG.normal(size=(2, 3, 8, 8))
    assert hcl_loss(t(fs), t(ft)).item() == pytest.approx(hcl_numpy(fs, ft), rel=1e-5)


def test_reviewkd_with_fixed_fusion_matches_numpy():
    """Identity 1x1 and centre-tap 3x3 convs, attention logits 0 (both weights 1/2): the fused
    shallow map is (s_shallow + upsampled s_deep) / 2."""
    Ssh, Sdp = RNG.normal(size=(2, 2, 2, 2)), RNG.normal(size=(2, 2))
    Tsh, Tdp = RNG.normal(size=(2, 2, 2, 2)), RNG.normal(size=(2, 2))
    m = ReviewKD(ReviewKD.Params(warmup_epochs=0, student_layers=["a", "p"], teacher_layers=["b", "q"]), ctx())
    m, loss = run(m, {"a": Ssh, "p": Sdp}, {"b": Tsh, "q": Tdp})
    with torch.no_grad():
        for abf in m.abfs:
            abf.conv1[0].weight.copy_(torch.eye(2)[:, :, None, None])
            abf.conv2[0].weight.zero_()
            abf.conv2[0].weight[:, :, 1, 1] = torch.eye(2)
            if abf.att is not None:
                abf.att[0].weight.zero_()
                abf.att[0].bias.zero_()
    bn_identity(m)
    fused = (Ssh + Sdp[:, :, None, None]) / 2
    expected = hcl_numpy(fused, Tsh) + np.mean((Sdp - Tdp) ** 2)
    assert loss()["reviewkd"].item() == pytest.approx(expected, rel=1e-5)


def test_reviewkd_warmup_ramps_linearly():
    S, T = {"a": RNG.normal(size=(2, 2, 2, 2)), "p": RNG.normal(size=(2, 2))}, {"b": RNG.normal(size=(2, 2, 2, 2)), "q": RNG.normal(size=(2, 2))}
    m = ReviewKD(ReviewKD.Params(warmup_epochs=4, student_layers=["a", "p"], teacher_layers=["b", "q"]), ctx())
    m, loss = run(m, S, T)
    m.on_epoch_start(0)
    first = loss()["reviewkd"].item()
    m.on_epoch_start(5)
    assert loss()["reviewkd"].item() == pytest.approx(4 * first, rel=1e-5)


# ------------------------------------------------------------------------ validation
def test_layer_params_are_validated():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        AT.Params(student_layers=["layer1", "layer2"], teacher_layers=["layer1"])
    with pytest.raises(ValidationError):
        AT.Params(student_layers=["layer 1"])
    with pytest.raises(ValidationError):
        FT.Params(student_layers=["a", "b"])  # FT reads one layer


# ----------------------------------------------------------------- end-to-end (engine)
ALL = ["fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "ab", "ft", "fsp", "nst", "crd", "reviewkd", "ofd"]
TEACHER = {"name": "cnn2d", "params": {"channels": [32, 64, 128]}}
TRAIN = {"epochs": 3, "optimizer": {"name": "sgd", "lr": 0.05}}


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    from kdlab.stages.runner import run_experiment
    from kdlab.store.runstore import RunStore

    store = str(tmp_path_factory.mktemp("teacher"))
    exp = Experiment(name="t", device="cpu", data={"name": "digits", "batch_size": 128}, student=TEACHER,
                     methods=[{"name": "ce"}], train={"epochs": 3, "optimizer": {"name": "sgd", "lr": 0.1}})
    run_experiment(exp, store=store, progress=False)
    (row,) = RunStore(store).rows()
    return row["path"] + "/checkpoints/best.pt"


def distil(methods, ckpt, store, student_channels=(8, 16, 32), epochs=3):
    from kdlab.stages.runner import run_experiment
    from kdlab.store.runstore import RunStore

    exp = Experiment(
        name="e2e", device="cpu", data={"name": "digits", "batch_size": 128},
        teacher={"model": TEACHER, "checkpoint": ckpt},
        student={"name": "cnn2d", "params": {"channels": list(student_channels)}},
        methods=methods, train={**TRAIN, "epochs": epochs},
    )
    run_experiment(exp, store=store, progress=False)
    (row,) = RunStore(store).rows()
    hist = [json.loads(l) for l in Path(row["path"], "metrics.jsonl").read_text().splitlines()]
    return exp, hist, torch.load(Path(row["path"], "checkpoints", "last.pt"), weights_only=True)["model"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_method_trains_student_through_engine(name, teacher_ckpt, tmp_path):
    from kdlab.seeding import seed_everything
    from kdlab.models.build import build_model
    from kdlab.stages.building import load_data

    spec = {"name": name, **({"nce_k": 64} if name == "crd" else {}), **({"warmup_epochs": 0} if name == "reviewkd" else {})}
    channels = (32, 64, 128) if name == "fsp" else (8, 16, 32)  # FSP needs equal widths
    # CRD's bank holds random vectors in epoch 1 and real embeddings from epoch 2 on: the NCE
    # loss jumps when they arrive and falls once the classes separate (measured: 11, 16, 19,
    # 15, 11, 9, ... over 10 epochs), so it gets more epochs and is compared from epoch 2.
    epochs = 8 if name == "crd" else 3
    exp, hist, final = distil([spec], teacher_ckpt, str(tmp_path), channels, epochs)
    total = [h["train_total"] for h in hist]
    first = total[1] if name == "crd" else total[0]
    assert total[-1] < first, total
    seed_everything(0)
    init = build_model(exp.student, load_data(exp.data)).state_dict()
    # The method alone (no CE) moved the student's first stage: its gradient reaches the student.
    assert not torch.allclose(init["layer1.0.weight"], final["layer1.0.weight"])


@pytest.mark.slow
def test_methods_combine_with_weights(teacher_ckpt, tmp_path):
    methods = [{"name": "ce"}, {"name": "kd", "weight": 0.5}, {"name": "crd", "weight": 0.8, "nce_k": 64}]
    _, hist, _ = distil(methods, teacher_ckpt, str(tmp_path))
    for h in hist:
        assert h["train_total"] == pytest.approx(h["train_ce"] + 0.5 * h["train_kd"] + 0.8 * h["train_crd"], rel=1e-4)
    assert hist[-1]["train_ce"] < hist[0]["train_ce"]


def test_wrong_layer_path_fails_before_training_with_close_paths(teacher_ckpt, tmp_path):
    from kdlab.stages.runner import run_experiment
    from kdlab.store.runstore import RunStore

    exp = Experiment(name="bad", device="cpu", data={"name": "digits", "batch_size": 128},
                     teacher={"model": TEACHER, "checkpoint": teacher_ckpt},
                     student={"name": "cnn2d", "params": {"channels": [8, 16, 32]}},
                     methods=[{"name": "fitnet", "student_layers": ["layer_2"]}], train=TRAIN)
    with pytest.raises(KdlabError, match=r"no module 'layer_2'.*Close paths: .*layer2"):
        run_experiment(exp, store=str(tmp_path), progress=False)
    assert RunStore(str(tmp_path)).rows() == []  # no student run was started


def test_default_layers_pair_hint_points_from_the_deep_end():
    from kdlab.registry import MODELS

    student = MODELS.get("cnn2d").obj(num_classes=3, input_shape=(1, 8, 8), channels=[4, 8])
    teacher = MODELS.get("cnn2d").obj(num_classes=3, input_shape=(1, 8, 8), channels=[4, 8, 16])
    at = AT(AT.Params(), ctx([teacher], student))
    assert (at.s_layers, at.t_layers) == (["hint:0", "hint:1"], ["hint:1", "hint:2"])
    rv = ReviewKD(ReviewKD.Params(), ctx([teacher], student))
    assert (rv.s_layers, rv.t_layers) == (["hint:0", "hint:1", "flatten"], ["hint:1", "hint:2", "flatten"])
    assert FitNet(FitNet.Params(), ctx([teacher], student)).needs().student_layers == ["hint:1"]
    with pytest.raises(KdlabError, match=r"no module 'layer_3'.*Close paths: .*layer3"):
        AT(AT.Params(teacher_layers=["layer1", "layer_3"]), ctx([teacher], student))
