"""Instruments that say which knowledge a teacher provides and what a student took from it
(spec: understanding-kd.md).

- instance level: the gradient-rescaling weight w = 1 - λ(1 - q_t)/(1 - p_t) (formula here; the
  measured version is recorded by the `record_w` method) and its relation to q_t;
- domain level: a model's class-similarity matrix and one geometry score (correlation of its
  off-diagonal entries with a reference: superclass co-membership, or the teacher's matrix);
- the teacher itself: mean true-class confidence, wrong-class entropy and uniformity, ECE,
  and warnings for the failure cases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.errors import KdlabError
from kdlab.knowledge.adapters import call_model, logits_of

# Warning thresholds (kdlab's choices, documented in docs/understanding.md).
OVERCONFIDENT_QT = 0.95  # mean true-class probability on the training set
OVERCONFIDENT_WRONG_ENTROPY = 0.15  # nats: -Σ_{j≠t} q_j log q_j, averaged
UNIFORM_WRONG = 0.7  # normalised entropy of the renormalised wrong-class distribution (CE teachers on hierarchy: 0.21-0.30; LS eps 0.2 teacher: 0.82)


# ------------------------------------------------------------------ instance level
def rescaling_weight(p_t: Tensor, q_t: Tensor, lam: float) -> Tensor:
    """w = 1 - λ(1 - q_t)/(1 - p_t): the factor KD (τ = 1, weight λ, CE weight 1-λ) puts on the
    true-logit gradient relative to plain CE."""
    return 1 - lam * (1 - q_t) / (1 - p_t)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); nan when either side is constant."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def binned_means(x: np.ndarray, y: np.ndarray, bins: int = 5) -> list[tuple[float, float, int]]:
    """Mean of y within quantile bins of x: [(mean x, mean y, count)], low x first."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) == 0:
        return []
    edges = np.unique(np.quantile(x, np.linspace(0, 1, bins + 1)))
    out = []
    for i in range(len(edges) - 1):
        sel = (x >= edges[i]) & ((x < edges[i + 1]) if i < len(edges) - 2 else (x <= edges[i + 1]))
        if sel.any():
            out.append((float(x[sel].mean()), float(y[sel].mean()), int(sel.sum())))
    return out


# -------------------------------------------------------------------- domain level
def cosine_similarity_matrix(vectors: Tensor) -> Tensor:
    """K x K cosine similarities of the rows."""
    v = F.normalize(vectors.detach().float(), dim=1)
    return v @ v.T


@torch.no_grad()
def predict_logits(model: nn.Module, x, prepare=None, batch_size: int = 1024) -> Tensor:
    """Logits of `x`: a tensor, or a split (in memory or streamed: its inputs read `batch_size`
    samples at a time, onto the model's device)."""
    if isinstance(x, Tensor):
        parts = (x[i : i + batch_size] for i in range(0, len(x), batch_size))
    else:
        device = next(model.parameters(), torch.empty(0)).device
        parts = (chunk["x"].to(device) for chunk in x.chunks(batch_size))
    was = model.training
    model.eval()
    outs = []
    with torch.inference_mode():
        for xb in parts:
            outs.append(logits_of(call_model(model, prepare(xb) if prepare is not None else xb), model).float())
    model.train(was)
    return torch.cat(outs) if outs else torch.zeros(0)


def split_labels(split, like: Tensor) -> Tensor:
    """A split's class labels (a streamed split's without reading its inputs), on `like`'s device."""
    y = split.labels()
    if y is None or y.dim() != 1:
        raise KdlabError("this instrument needs class labels `y` (one integer per sample) of the data")
    return y.to(like.device)


def class_mean_rows(values: Tensor, y: Tensor, num_classes: int) -> Tensor:
    sums = torch.zeros(num_classes, values.shape[1], device=values.device).index_add_(0, y, values.float())
    counts = torch.bincount(y, minlength=num_classes).clamp_min(1).to(values.device)
    return sums / counts[:, None]


def model_class_similarity(model: nn.Module, data=None) -> Tensor:
    """Cosine similarity of the class weight vectors (`fc.weight`), or of the class-mean logits
    on the training set when the model has no linear `fc`."""
    fc = getattr(model, "fc", None)
    if isinstance(fc, nn.Linear):
        return cosine_similarity_matrix(fc.weight).cpu()
    if data is None:
        raise ValueError("a model without a linear `fc` needs the data for class-mean logits")
    logits = predict_logits(model, data.train, data.prepare)
    means = class_mean_rows(logits, split_labels(data.train, logits), data.num_classes)
    return cosine_similarity_matrix(means - means.mean(0, keepdim=True)).cpu()


def superclass_comembership(superclass: list[int]) -> Tensor:
    """M[i, j] = 1 when classes i and j share a superclass."""
    s = torch.as_tensor(superclass)
    return (s[:, None] == s[None, :]).float()


def geometry_score(similarity: Tensor, reference: Tensor) -> float:
    """Pearson correlation between the off-diagonal entries of a class-similarity matrix and a
    reference (superclass co-membership or the teacher's similarities): 1 = same structure,
    ≈ 0 = unrelated. The diagonal is left out: it is 1 in every cosine matrix."""
    s = similarity.detach().double().cpu()
    r = reference.detach().double().cpu()
    off = ~torch.eye(len(s), dtype=torch.bool)
    a, b = s[off], r[off]
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum()) / den if den > 0 else float("nan")


def geometry_reference(data, teacher: Optional[nn.Module] = None) -> tuple[Tensor, str]:
    """The matrix a student's geometry is scored against, and what it is."""
    if getattr(data, "superclass", None):
        return superclass_comembership(data.superclass), "superclass co-membership"
    if teacher is None:
        raise ValueError("without superclasses the geometry score needs a teacher")
    return model_class_similarity(teacher, data), "teacher class similarity"


# -------------------------------------------------------------------- the teacher
def expected_calibration_error(probs: Tensor, y: Tensor, bins: int = 15) -> float:
    """ECE: Σ_b |B_b|/n · |accuracy(B_b) - mean confidence(B_b)| over equal-width bins of the
    top-1 confidence (bins are (lo, hi], the first also takes 0)."""
    conf, pred = probs.float().max(1)
    correct = (pred == y).float()
    n = len(y)
    ece = 0.0
    edges = torch.linspace(0, 1, bins + 1)
    for i in range(bins):
        lo, hi = float(edges[i]), float(edges[i + 1])
        sel = (conf > lo) & (conf <= hi) if i > 0 else (conf >= lo) & (conf <= hi)
        k = int(sel.sum())
        if k:
            ece += k / n * abs(float(correct[sel].mean()) - float(conf[sel].mean()))
    return ece


def wrong_class_stats(probs: Tensor, y: Tensor) -> dict[str, Tensor]:
    """Per example: q_t, the wrong-class entropy -Σ_{j≠t} q_j log q_j (→ 0 for an over-confident
    teacher) and the uniformity of the wrong-class mass: the entropy of q_{j≠t}/(1-q_t)
    divided by log(K-1) (1 = uniform, as after label-smoothing training)."""
    k = probs.shape[1]
    p = probs.double()
    q_t = p.gather(1, y[:, None]).squeeze(1)
    mask = torch.ones_like(p, dtype=torch.bool).scatter_(1, y[:, None], False)
    wrong = torch.where(mask, p, torch.zeros_like(p))
    ent = -torch.special.xlogy(wrong, wrong).sum(1)
    renorm = wrong / wrong.sum(1, keepdim=True).clamp_min(1e-300)
    uniform = -torch.special.xlogy(renorm, renorm).sum(1) / math.log(k - 1) if k > 2 else torch.ones_like(q_t)
    return {"q_t": q_t.float(), "wrong_entropy": ent.float(), "wrong_uniformity": uniform.float()}


@dataclass
class TeacherReport:
    mean_q_t: float
    wrong_entropy: float
    wrong_uniformity: float
    train_top1: float
    ece: float
    ece_split: str
    geometry: Optional[float]  # teacher's own class geometry vs superclasses (None without them)
    warnings: list[str] = field(default_factory=list)
    q_t: Optional[np.ndarray] = None  # per training example, tau = 1

    def numbers(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "q_t"}


def teacher_warnings(mean_q_t: float, wrong_entropy: float, wrong_uniformity: float, tau: float) -> list[str]:
    """The failure cases of the spec, each with what to try."""
    out = []
    if mean_q_t >= OVERCONFIDENT_QT and wrong_entropy <= OVERCONFIDENT_WRONG_ENTROPY:
        out.append(
            f"over-confident teacher: mean q_t = {mean_q_t:.3f} and wrong-class entropy {wrong_entropy:.3f} nats on "
            f"the training set, so both the smoothing and the per-example rescaling signal are nearly gone. "
            f"Try a higher temperature (tau > {tau:g}), an earlier (early-stopped) teacher checkpoint, or a smaller teacher."
        )
    if wrong_uniformity >= UNIFORM_WRONG:
        out.append(
            f"near-uniform wrong-class mass (uniformity {wrong_uniformity:.3f} of 1): the teacher carries little class-"
            f"relationship (domain) knowledge, as after label-smoothing training. Try a teacher trained without label "
            f"smoothing, or expect KD to act like label smoothing here."
        )
    return out


def diagnose_teacher(teacher: nn.Module, data, tau: float = 1.0) -> TeacherReport:
    """Teacher diagnostics on the training set (confidence, wrong-class mass) and on held-out
    data (ECE on validation, or test when there is no validation split)."""
    probs = F.softmax(predict_logits(teacher, data.train, data.prepare), dim=1)
    y = split_labels(data.train, probs)
    st = wrong_class_stats(probs, y)
    held, name = (data.val, "val") if len(data.val) else (data.test, "test")
    hprobs = F.softmax(predict_logits(teacher, held, data.prepare), dim=1)
    geom = None
    if getattr(data, "superclass", None):
        geom = geometry_score(model_class_similarity(teacher, data), superclass_comembership(data.superclass))
    rep = TeacherReport(
        mean_q_t=float(st["q_t"].mean()),
        wrong_entropy=float(st["wrong_entropy"].mean()),
        wrong_uniformity=float(st["wrong_uniformity"].mean()),
        train_top1=100.0 * float((probs.argmax(1) == y).float().mean()),
        ece=expected_calibration_error(hprobs, split_labels(held, hprobs)),
        ece_split=name,
        geometry=geom,
        q_t=st["q_t"].cpu().numpy(),
    )
    rep.warnings = teacher_warnings(rep.mean_q_t, rep.wrong_entropy, rep.wrong_uniformity, tau)
    return rep
