"""Token-level divergences for LM distillation (kdlab/methods/lm_distill.py, token_divergences.py):
each against an explicit float64 loop over tokens, the masks, the β/α end points, the
temperature, and the chunked loss against the unchunked one (value and gradient)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from helpers import cli, write_config
from kdlab.errors import KdlabError
from kdlab.methods import token_divergences as td
from kdlab.methods.base import MethodContext, Outputs
from kdlab.methods.lm_distill import (
    AdaptiveKL,
    ForwardKL,
    GeneralizedJSD,
    ReverseKL,
    SkewForwardKL,
    SkewReverseKL,
    TotalVariation,
)
from kdlab.methods.logit_kd import kd_loss

rng = np.random.default_rng(0)
B, T, V = 3, 5, 7
S = rng.normal(size=(B, T, V)) * 2
TT = rng.normal(size=(B, T, V)) * 2
Y = rng.integers(0, V, size=(B, T))
Y[0, 0] = Y[1, 3] = Y[2, 4] = -100  # ignored labels (e.g. prompt tokens)
LOSS_MASK = np.ones((B, T), dtype=bool)
LOSS_MASK[2, :2] = False  # e.g. a prompt that is not distilled
ATTN = np.ones((B, T), dtype=np.int64)
ATTN[1, 4] = 0  # right padding
COUNTED = (Y != -100) & LOSS_MASK & (ATTN == 1)


# ---- the formulas, written out per token in numpy -------------------------------------------

def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def np_kl(a, b):
    return sum(a[v] * math.log(a[v] / b[v]) for v in range(len(a)))


def np_fkl(p, q):
    return np_kl(p, q)


def np_rkl(p, q):
    return np_kl(q, p)


def np_jsd(p, q, beta):
    if beta == 0:  # GKD's end points
        return np_kl(p, q)
    if beta == 1:
        return np_kl(q, p)
    m = beta * p + (1 - beta) * q
    return beta * np_kl(p, m) + (1 - beta) * np_kl(q, m)


def np_skew_fkl(p, q, alpha):
    return np_kl(p, alpha * p + (1 - alpha) * q)


def np_skew_rkl(p, q, alpha):
    return np_kl(q, (1 - alpha) * p + alpha * q)


def np_tvd(p, q):
    return 0.5 * sum(abs(p[v] - q[v]) for v in range(len(p)))


def np_akl(p, q, mu):
    head, mass = set(), 0.0
    for v in sorted(range(len(p)), key=lambda v: -p[v]):
        if mass < mu:  # the head grows until its mass reaches mu
            head.add(v)
        mass += p[v]
    g_head = sum(abs(p[v] - q[v]) for v in head)
    g_tail = sum(abs(p[v] - q[v]) for v in range(len(p)) if v not in head)
    return (g_head * np_kl(p, q) + g_tail * np_kl(q, p)) / (g_head + g_tail)


def loop(fn, tau, counted=COUNTED, s=S, t=TT):
    vals = [fn(softmax(t[b, i] / tau), softmax(s[b, i] / tau)) for b in range(B) for i in range(T) if counted[b, i]]
    return sum(vals) / len(vals)  # mean over the counted tokens of the batch; no tau^2


CASES = {  # id: (method class, params, numpy formula)
    "fkl": (ForwardKL, {}, np_fkl),
    "rkl": (ReverseKL, {}, np_rkl),
    "jsd0.5": (GeneralizedJSD, {"beta": 0.5}, lambda p, q: np_jsd(p, q, 0.5)),
    "jsd0.1": (GeneralizedJSD, {"beta": 0.1}, lambda p, q: np_jsd(p, q, 0.1)),
    "jsd0": (GeneralizedJSD, {"beta": 0.0}, lambda p, q: np_jsd(p, q, 0.0)),
    "jsd1": (GeneralizedJSD, {"beta": 1.0}, lambda p, q: np_jsd(p, q, 1.0)),
    "skew_fkl0.1": (SkewForwardKL, {"alpha": 0.1}, lambda p, q: np_skew_fkl(p, q, 0.1)),
    "skew_fkl0": (SkewForwardKL, {"alpha": 0.0}, lambda p, q: np_skew_fkl(p, q, 0.0)),
    "skew_fkl1": (SkewForwardKL, {"alpha": 1.0}, lambda p, q: np_skew_fkl(p, q, 1.0)),
    "skew_rkl0.1": (SkewReverseKL, {"alpha": 0.1}, lambda p, q: np_skew_rkl(p, q, 0.1)),
    "skew_rkl0": (SkewReverseKL, {"alpha": 0.0}, lambda p, q: np_skew_rkl(p, q, 0.0)),
    "skew_rkl1": (SkewReverseKL, {"alpha": 1.0}, lambda p, q: np_skew_rkl(p, q, 1.0)),
    "tvd": (TotalVariation, {}, np_tvd),
    "akl0.5": (AdaptiveKL, {"mu": 0.5}, lambda p, q: np_akl(p, q, 0.5)),
    "akl0.8": (AdaptiveKL, {"mu": 0.8}, lambda p, q: np_akl(p, q, 0.8)),
}


def ctx():
    return MethodContext(num_classes=V, student=None, teachers=[], train_size=B, epochs=1, device=torch.device("cpu"))


def t64(a, grad=False):
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


def batch(**extra):
    return {"y": torch.tensor(Y), "loss_mask": torch.tensor(LOSS_MASK), "attention_mask": torch.tensor(ATTN), **extra}


def method(case, **params):
    cls, p, _ = CASES[case]
    return cls(cls.Params(**{**p, **params}), ctx())


def value(m, s=S, t=TT, b=None):
    return m(b or batch(), Outputs(logits=t64(s)), [Outputs(logits=t64(t))])[m.name]


@pytest.mark.parametrize("tau", [1.0, 2.0])
@pytest.mark.parametrize("case", list(CASES))
def test_divergence_matches_its_formula_per_token(case, tau):
    """Over the counted tokens only (label -100, loss_mask 0 and padding excluded); chunk of 4
    tokens: the 9 counted tokens fall into chunks of 4, 4 and 1."""
    assert COUNTED.sum() == 9
    got = value(method(case, tau=tau, chunk_tokens=4))
    assert got.item() == pytest.approx(loop(CASES[case][2], tau), rel=1e-10, abs=1e-12)


def test_akl_head_is_the_fewest_top_tokens_reaching_mu():
    # p sorted: 0.4, 0.3, 0.2, 0.1. mu = 0.5: the head is {0.4, 0.3} (0.4 alone is below mu);
    # the authors' code (inclusive cumsum <= mu, plus the top token) would take {0.4} only.
    p = torch.tensor([[0.1, 0.4, 0.2, 0.3]], dtype=torch.float64)
    q = torch.tensor([[0.25, 0.25, 0.25, 0.25]], dtype=torch.float64)
    lp, lq = p.log(), q.log()
    g_head, g_tail = 0.15 + 0.05, 0.15 + 0.05
    fkl, rkl = np_kl(p[0].numpy(), q[0].numpy()), np_kl(q[0].numpy(), p[0].numpy())
    expected = (g_head * fkl + g_tail * rkl) / (g_head + g_tail)
    assert td.adaptive_kl(lq, lp, 0.5).item() == pytest.approx(expected, rel=1e-12)
    # mu = 0.4: the top token alone reaches it; head gap 0.15, tail gap 0.25
    expected = (0.15 * fkl + 0.25 * rkl) / 0.4
    assert td.adaptive_kl(lq, lp, 0.4).item() == pytest.approx(expected, rel=1e-12)


def test_end_points_equal_the_plain_divergences():
    fkl, rkl = value(method("fkl")), value(method("rkl"))
    assert value(method("jsd0")).item() == pytest.approx(fkl.item(), rel=1e-12)
    assert value(method("jsd1")).item() == pytest.approx(rkl.item(), rel=1e-12)
    assert value(method("skew_fkl0")).item() == pytest.approx(fkl.item(), rel=1e-12)
    assert value(method("skew_rkl0")).item() == pytest.approx(rkl.item(), rel=1e-12)
    assert value(method("skew_fkl1")).item() == pytest.approx(0.0, abs=1e-12)  # KL(p || p)
    assert value(method("skew_rkl1")).item() == pytest.approx(0.0, abs=1e-12)  # KL(q || q)
    # GKD's end points are limits of JSD(beta)/beta and JSD(beta)/(1-beta): the formula itself
    # goes to 0 there, which is why the end points are defined separately.
    eps = 1e-6
    assert value(method("jsd0.5", beta=eps)).item() / eps == pytest.approx(fkl.item(), rel=1e-4)
    assert value(method("jsd0.5", beta=1 - eps)).item() / eps == pytest.approx(rkl.item(), rel=1e-4)
    assert value(method("skew_fkl0", alpha=eps)).item() == pytest.approx(fkl.item(), rel=1e-4)


def test_temperature_has_no_tau_squared_factor():
    """fkl at tau on every token = Hinton's kd (which keeps tau^2) / tau^2."""
    everything = {"y": torch.tensor(np.zeros((B, T), dtype=np.int64))}
    for tau in (1.0, 3.0):
        got = value(method("fkl", tau=tau), b=everything)
        assert got.item() == pytest.approx(kd_loss(t64(S), t64(TT), tau).item() / tau**2, rel=1e-6)  # kd: float32
        assert got.item() == pytest.approx(loop(np_fkl, tau, counted=np.ones((B, T), bool)), rel=1e-10)


@pytest.mark.parametrize("case", list(CASES))
def test_masked_positions_change_nothing(case):
    """New logits at excluded positions leave the loss alone; their gradient is exactly 0."""
    s2, t2 = S.copy(), TT.copy()
    s2[~COUNTED] = rng.normal(size=((~COUNTED).sum(), V)) * 5
    t2[~COUNTED] = rng.normal(size=((~COUNTED).sum(), V)) * 5
    m = method(case, chunk_tokens=3)
    assert value(m, s2, t2).item() == pytest.approx(value(m).item(), rel=1e-12, abs=1e-15)
    s = t64(s2, grad=True)
    m(batch(), Outputs(logits=s), [Outputs(logits=t64(t2))])[m.name].backward()
    assert torch.all(s.grad[torch.tensor(~COUNTED)] == 0)
    if case not in ("skew_fkl1", "skew_rkl1"):  # identically 0 at alpha = 1
        assert s.grad[torch.tensor(COUNTED)].abs().sum() > 0


def test_each_mask_source_is_honoured():
    m = method("fkl")
    only_labels = {"y": torch.tensor(Y)}
    assert value(m, b=only_labels).item() == pytest.approx(loop(np_fkl, 1.0, counted=Y != -100), rel=1e-12)
    with_pad = {"y": torch.tensor(Y), "attention_mask": torch.tensor(ATTN)}
    assert value(m, b=with_pad).item() == pytest.approx(loop(np_fkl, 1.0, counted=(Y != -100) & (ATTN == 1)), rel=1e-12)


def test_no_counted_token_gives_zero_and_zero_gradient():
    s = t64(S, grad=True)
    y = torch.full((B, T), -100)
    loss = method("akl0.5", chunk_tokens=2)({"y": y}, Outputs(logits=s), [Outputs(logits=t64(TT))])["akl"]
    loss.backward()
    assert loss.item() == 0.0 and torch.all(s.grad == 0)


def test_vocabulary_mismatch_is_a_clear_error():
    with pytest.raises(KdlabError, match="same tokens and vocabulary"):
        value(method("fkl"), t=TT[..., :-1])


@pytest.mark.parametrize("name,params", [("jsd", {"beta": 1.5}), ("skew_fkl", {"alpha": -0.1}),
                                         ("akl", {"mu": 0}), ("fkl", {"tau": 0}), ("rkl", {"chunk_tokens": 0})])
def test_params_are_validated(name, params):
    from kdlab.registry import METHODS

    with pytest.raises(ValidationError):
        METHODS.get(name).obj.Params(**params)


def test_bad_param_in_a_config_exits_2(tmp_path, store, capsys):
    cfg = {
        "name": "bad", "seeds": [0], "device": "cpu",
        "data": {"name": "pydoc", "params": {"seq_len": 8, "max_tokens": 2000, "max_vocab": 50}, "batch_size": 8},
        "teacher": {"model": {"name": "lstm_lm", "params": {"emb_dim": 8, "hidden": 8}}},
        "student": {"name": "lstm_lm", "params": {"emb_dim": 8, "hidden": 8}},
        "methods": [{"name": "jsd", "beta": 2.0}],
        "train": {"epochs": 1},
    }
    assert cli("run", write_config(tmp_path, cfg), "--store", store, "--quiet") == 2
    assert "beta" in capsys.readouterr().err


# ---- chunking: the same value and gradient, bounded saved state ------------------------------

FUNCS = {
    "fkl": td.forward_kl,
    "rkl": td.reverse_kl,
    "jsd": lambda q, p: td.generalized_jsd(q, p, 0.3),
    "jsd0": lambda q, p: td.generalized_jsd(q, p, 0.0),
    "skew_fkl": lambda q, p: td.skew_forward_kl(q, p, 0.1),
    "skew_rkl": lambda q, p: td.skew_reverse_kl(q, p, 0.1),
    "tvd": td.total_variation,
    "akl": lambda q, p: td.adaptive_kl(q, p, 0.5),
}


@pytest.mark.parametrize("chunk", [1, 2, 4, 5, 9, 64])
@pytest.mark.parametrize("name", list(FUNCS))
def test_chunked_equals_unchunked_value_and_gradient(name, chunk):
    """9 counted tokens: chunks of 2, 4 and 5 do not divide them; 64 is one chunk. Gradients
    w.r.t. both logits (the teacher's too, for a teacher trained alongside)."""
    mask = torch.tensor(COUNTED)
    ref_s, ref_t = t64(S, grad=True), t64(TT, grad=True)
    ref = td.divergence_loss(ref_s, ref_t, mask, FUNCS[name], 1.5, None)
    ref.backward()
    s, t = t64(S, grad=True), t64(TT, grad=True)
    got = td.divergence_loss(s, t, mask, FUNCS[name], 1.5, chunk)
    (3.0 * got).backward()  # an upstream weight reaches the stored gradient
    assert got.item() == pytest.approx(ref.item(), rel=1e-12, abs=1e-15)
    torch.testing.assert_close(s.grad, 3.0 * ref_s.grad, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(t.grad, 3.0 * ref_t.grad, rtol=1e-10, atol=1e-13)


def test_chunked_gradient_only_for_the_inputs_that_need_it(monkeypatch):
    s = t64(S, grad=True)
    td.divergence_loss(s, t64(TT), torch.tensor(COUNTED), td.forward_kl, 1.0, 3).backward()
    ref_s = t64(S, grad=True)
    td.divergence_loss(ref_s, t64(TT), torch.tensor(COUNTED), td.forward_kl, 1.0, None).backward()
    torch.testing.assert_close(s.grad, ref_s.grad, rtol=1e-10, atol=1e-13)
    calls = []
    real_grad = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: calls.append(1) or real_grad(*a, **k))
    with torch.no_grad():  # evaluation: no per-chunk gradients at all
        assert not td.divergence_loss(s, t64(TT), torch.tensor(COUNTED), td.forward_kl, 1.0, 3).requires_grad
    assert calls == []
    td.divergence_loss(s, t64(TT), torch.tensor(COUNTED), td.forward_kl, 1.0, 3)
    assert len(calls) == 3  # 9 tokens in chunks of 3


@pytest.mark.parametrize("name", ["fkl", "jsd", "akl"])
def test_chunked_keeps_only_the_logit_gradient_for_backward(name):
    """What autograd holds between forward and backward: the unchunked loss keeps two or more
    (tokens, V) intermediates; the chunked one only a gradient the size of the logits."""
    n, v = 64, 50
    s_all, t_all = torch.randn(n, v, requires_grad=True), torch.randn(n, v)
    mask = torch.ones(n, dtype=torch.bool)

    def saved_elements(chunk):
        """Elements of the distinct tensors the loss's graph saved for backward (inputs aside)."""
        loss = td.divergence_loss(s_all, t_all, mask, FUNCS[name], 1.0, chunk)
        saved, seen, stack = {}, set(), [loss.grad_fn]
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            # a custom autograd Function: what it saved, and the gradient buffers on its ctx
            tensors = list(getattr(node, "saved_tensors", ())) + list(getattr(node, "grads", None) or ())
            for attr in dir(node):
                if attr.startswith("_saved_"):
                    x = getattr(node, attr)
                    tensors += [x] if isinstance(x, torch.Tensor) else [y for y in x if isinstance(y, torch.Tensor)] \
                        if isinstance(x, (tuple, list)) else []
            for x in tensors:
                if x is not None and x.data_ptr() not in (s_all.data_ptr(), t_all.data_ptr()):
                    saved[x.data_ptr()] = x.numel()
            stack += [fn for fn, _ in node.next_functions]
        return sum(saved.values())

    assert saved_elements(8) == n * v
    assert saved_elements(None) >= 2 * n * v


def test_chunked_backward_runs_once():
    s = t64(S, grad=True)
    loss = td.divergence_loss(s, t64(TT), torch.tensor(COUNTED), td.forward_kl, 1.0, 3)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="retain_graph is not supported"):
        loss.backward()


def test_chunked_bf16_logits_compute_in_float32():
    s32, t32 = torch.tensor(S, dtype=torch.float32), torch.tensor(TT, dtype=torch.float32)
    s = s32.to(torch.bfloat16).requires_grad_()
    t = t32.to(torch.bfloat16)
    got = td.divergence_loss(s, t, torch.tensor(COUNTED), td.forward_kl, 1.0, 4)
    got.backward()
    assert got.dtype == torch.float32 and s.grad.dtype == torch.bfloat16
    ref = td.divergence_loss(s.detach().float(), t.float(), torch.tensor(COUNTED), td.forward_kl, 1.0, None)
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)


# ---- end to end on the lm task ---------------------------------------------------------------

@pytest.mark.slow
def test_divergences_distil_a_language_model_end_to_end(tmp_path, store):
    """Teacher transformer_lm -> student lstm_lm on capped pydoc, 2 epochs: the first epoch's
    train terms are pinned, and each divergence's student differs from the CE-only one."""
    import json
    from pathlib import Path

    from kdlab.store.runstore import RunStore

    cfg = {
        "name": "lm_div", "seeds": [0], "device": "cpu",
        "data": {"name": "pydoc", "params": {"split": "contiguous", "seq_len": 16, "max_tokens": 4000, "max_vocab": 150},
                 "batch_size": 16, "eval_batch_size": 64},
        "teacher": {"model": {"name": "transformer_lm",
                              "params": {"d_model": 32, "nhead": 2, "layers": 1, "ff": 64, "dropout": 0.0}}},
        "student": {"name": "lstm_lm", "params": {"emb_dim": 16, "hidden": 16, "dropout": 0.0}},
        "variants": {
            "ce": [{"name": "ce"}],
            "fkl": [{"name": "ce", "weight": 0.5}, {"name": "fkl", "weight": 0.5, "tau": 2.0, "chunk_tokens": 100}],
            "jsd": [{"name": "ce", "weight": 0.5}, {"name": "jsd", "weight": 0.5, "beta": 0.5, "chunk_tokens": 100}],
        },
        "train": {"epochs": 2, "optimizer": {"name": "adam", "lr": 0.01, "weight_decay": 0.0}},
    }
    assert cli("run", write_config(tmp_path, cfg), "--store", store, "--quiet") == 0
    runs = {r["variant"]: r for r in RunStore(store).rows() if r.get("variant") in cfg["variants"]}
    first = {k: json.loads(Path(r["path"], "metrics.jsonl").read_text().splitlines()[0]) for k, r in runs.items()}
    last = {k: json.loads(Path(r["path"], "metrics.jsonl").read_text().splitlines()[-1]) for k, r in runs.items()}
    # First epoch, same init and data order: the CE term is nearly the same, the divergence
    # term is pinned (a divergence that computed nothing, or something else, would move it).
    assert first["ce"]["train_total"] == pytest.approx(4.724407, rel=1e-4)
    assert first["fkl"]["train_fkl"] == pytest.approx(0.156749, rel=1e-4)
    assert first["fkl"]["train_total"] == pytest.approx(2.436625, rel=1e-4)
    assert first["jsd"]["train_jsd"] == pytest.approx(0.162334, rel=1e-4)
    assert first["jsd"]["train_total"] == pytest.approx(2.439446, rel=1e-4)
    for name in ("fkl", "jsd"):
        assert abs(last[name]["val_ppl"] - last["ce"]["val_ppl"]) > 1e-3
        assert abs(last[name]["val_loss"] - last["ce"]["val_loss"]) > 1e-5
