"""Synthetic teachers: the rungs of the ablation ladder that decomposes a teacher's knowledge
into universe, domain and instance-specific parts (spec: understanding-kd.md; Tang et al.
2020, arXiv:2002.03532).

Each method builds a target distribution r per example and returns
tau^2 * KL(r || softmax(z / tau)), the same scaling as `kd`, so λ is the method's weight in the
config (put `ce` beside it with weight 1-λ). With `alpha` set, the method mixes in CE itself.

- kd_pt      r_t = q_t, r_j = (1-q_t)/(K-1)                       universe + instance
- kd_sim     r = s_y, s_c = softmax(ŵ_c·Ŵᵀ / sim_tau)              universe + domain
- kd_pt_sim  r_t = q_t, r_j = (1-q_t) s_{t,j} / Σ_{k≠t} s_{t,k}   universe + domain + instance

q is the teacher's distribution at temperature tau. The class-similarity rows s_c come from the
L2-normalised rows of the teacher's last linear layer (`fc.weight`), or, when the teacher has
no linear `fc` (or `sim_source: class_mean`), from its class-mean distributions on the training
set, normalised the same way (the same cosine/softmax formula on other vectors).

`sim_source: class_mean_target` is kdlab's reading of the spec's "from the class-mean teacher
distribution": s_c IS the mean of softmax(teacher / tau) over the class-c training examples (the
teacher's targets with the per-example variation averaged out), used directly, with no
cosine/softmax step (whose self-similarity of 1 swamps weakly structured class vectors).
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kdlab.errors import KdlabError
from kdlab.knowledge.adapters import call_model, logits_of
from kdlab.methods.logit_utils import kl_to_target_per_sample
from kdlab.methods.base import Method, MethodContext, MethodParams, one_teacher, register_method


def soft_ce_kl(student_logits: Tensor, target: Tensor, tau: float) -> Tensor:
    """tau^2 * KL(target || softmax(student/tau)), summed over classes, mean over the batch."""
    return kl_to_target_per_sample(student_logits, target, tau).mean()


def partial_teacher_targets(teacher_probs: Tensor, y: Tensor) -> Tensor:
    """Keep q_t on the true class; spread 1 - q_t uniformly over the other K-1 classes."""
    k = teacher_probs.shape[1]
    q_t = teacher_probs.gather(1, y[:, None])
    r = ((1 - q_t) / (k - 1)).expand(-1, k).clone()
    r.scatter_(1, y[:, None], q_t)
    return r


def similarity_targets(class_vectors: Tensor, sim_tau: float) -> Tensor:
    """S[c] = softmax(ŵ_c · Ŵᵀ / sim_tau) with L2-normalised rows ŵ: one distribution per class."""
    w = F.normalize(class_vectors.float(), dim=1)
    return F.softmax(w @ w.T / sim_tau, dim=1)


def pt_sim_targets(teacher_probs: Tensor, y: Tensor, sim: Tensor) -> Tensor:
    """q_t on the true class; 1 - q_t over the other classes in proportion to s_{t,j}."""
    q_t = teacher_probs.gather(1, y[:, None])
    s = sim[y].clone()
    s.scatter_(1, y[:, None], 0.0)
    s = s / s.sum(1, keepdim=True)
    r = (1 - q_t) * s
    r.scatter_(1, y[:, None], q_t)
    return r


def class_mean_probs(teacher: nn.Module, split, num_classes: int, prepare=None,
                     batch_size: int = 1024, tau: float = 1.0) -> Tensor:
    """Mean teacher distribution softmax(teacher / tau) over the training examples of each class
    (`split` in memory or streamed: read `batch_size` samples at a time)."""
    labels = split.labels()
    if labels is None or labels.dim() != 1:
        raise KdlabError("class-mean similarity targets need class labels `y` (one integer per sample) in the training split")
    device = next(teacher.parameters(), torch.empty(0)).device
    sums = torch.zeros(num_classes, num_classes, device=device)
    counts = torch.zeros(num_classes, device=device)
    was = teacher.training
    teacher.eval()
    done = 0
    with torch.inference_mode():
        for chunk in split.chunks(batch_size):
            xb = chunk["x"].to(device)
            xb = prepare(xb) if prepare is not None else xb
            y = labels[done : done + len(xb)].to(device)
            done += len(xb)
            p = F.softmax(logits_of(call_model(teacher, xb), teacher).float() / tau, dim=1)
            sums.index_add_(0, y, p)
            counts.index_add_(0, y, torch.ones(len(p), device=device))
    teacher.train(was)
    if bool((counts == 0).any()):
        missing = torch.nonzero(counts == 0).flatten().tolist()[:5]
        raise KdlabError(f"kd_sim: classes {missing} have no training examples; class-mean targets need every class")
    return sums / counts[:, None]


def _train_split(ctx: MethodContext):
    if ctx.data is None:
        raise KdlabError("class-mean similarity targets need the training split in the method context")
    return ctx.data.train


def class_mean_targets(teacher: nn.Module, ctx: MethodContext, tau: float) -> Tensor:
    """Row c: the mean of softmax(teacher / tau) over the class-c examples the student trains on."""
    return class_mean_probs(teacher, _train_split(ctx), ctx.num_classes, ctx.data.prepare, tau=tau)


def teacher_class_vectors(teacher: nn.Module, ctx: MethodContext, source: str) -> Tensor:
    """The vectors whose cosine similarities define the classes' similarity targets."""
    fc = getattr(teacher, "fc", None)
    if source == "fc" or (source == "auto" and isinstance(fc, nn.Linear)):
        if not isinstance(fc, nn.Linear):
            raise KdlabError("sim_source 'fc' needs a teacher whose last layer `fc` is nn.Linear; use sim_source: class_mean")
        return fc.weight.detach().clone()
    return class_mean_probs(teacher, _train_split(ctx), ctx.num_classes, ctx.data.prepare)


class _SyntheticTeacher(Method):
    """Shared parts: the tau/alpha params, the loss and the optional CE mix."""

    uses_teacher = True

    class Params(MethodParams):
        tau: float = Field(1.0, gt=0)
        alpha: Optional[float] = Field(None, ge=0, le=1)

    def _loss(self, batch, student, target) -> dict[str, Tensor]:
        p = self.params
        loss = soft_ce_kl(student.logits, target, p.tau)
        if p.alpha is None:
            return {self.name: loss}
        ce = F.cross_entropy(student.logits, batch["y"])
        return {self.name: p.alpha * loss, f"{self.name}_ce": (1 - p.alpha) * ce}


class _SimilarityMixin:
    """Holds the class-similarity matrix, computed once from the teacher in `build()` (the
    teacher is on the training device by then)."""

    def __init__(self, params, ctx: MethodContext):
        super().__init__(params, ctx)  # the method base (next in the MRO)
        if not ctx.teachers:
            raise KdlabError(f"{self.name} needs a teacher (its class similarities): add a `teacher:` section")
        # In a plain list so the teacher is not registered as a (trainable) submodule.
        self._ctx = [ctx]
        # A buffer so it follows the module to the device and into checkpoints (resume).
        self.register_buffer("sim", torch.full((ctx.num_classes, ctx.num_classes), 1.0 / ctx.num_classes))

    def build(self, student, teachers) -> None:
        ctx = self._ctx[0]
        if self.params.sim_source == "class_mean_target":
            # Already one distribution per class: used as is (sim_tau plays no part).
            self.sim = class_mean_targets(ctx.teachers[0], ctx, self.params.tau).to(self.sim.device)
            return
        vecs = teacher_class_vectors(ctx.teachers[0], ctx, self.params.sim_source)
        if vecs.shape[0] != ctx.num_classes:
            raise KdlabError(f"{self.name}: the teacher has {vecs.shape[0]} class vectors but the data has {ctx.num_classes} classes")
        self.sim = similarity_targets(vecs, self.params.sim_tau).to(self.sim.device)


@register_method(
    "kd_pt",
    "partial teacher: teacher's q_t on the true class, the rest uniform (universe + instance knowledge)",
    "Tang et al. 2020, arXiv:2002.03532",
)
class KDPartialTeacher(_SyntheticTeacher):
    def forward(self, batch, student, teachers):
        q = F.softmax(one_teacher(teachers, self.name).logits.float() / self.params.tau, dim=1)
        return self._loss(batch, student, partial_teacher_targets(q, batch["y"]))


class _SimParams(_SyntheticTeacher.Params):
    sim_tau: float = Field(0.1, gt=0)  # temperature of the softmax over cosine similarities
    # auto/fc/class_mean: cosine/softmax of class vectors; class_mean_target: the teacher's
    # class-mean distribution at tau, used directly.
    sim_source: Literal["auto", "fc", "class_mean", "class_mean_target"] = "auto"


@register_method(
    "kd_sim",
    "class-similarity teacher: one target per class from the teacher's class vectors (universe + domain)",
    "Tang et al. 2020, arXiv:2002.03532",
)
class KDSimilarity(_SimilarityMixin, _SyntheticTeacher):
    Params = _SimParams

    def forward(self, batch, student, teachers):
        return self._loss(batch, student, self.sim[batch["y"]])


@register_method(
    "kd_pt_sim",
    "partial teacher + class similarity: q_t on the true class, 1-q_t spread by class similarity",
    "Tang et al. 2020, arXiv:2002.03532",
)
class KDPartialSimilarity(_SimilarityMixin, _SyntheticTeacher):
    Params = _SimParams

    def forward(self, batch, student, teachers):
        q = F.softmax(one_teacher(teachers, self.name).logits.float() / self.params.tau, dim=1)
        return self._loss(batch, student, pt_sim_targets(q, batch["y"], self.sim))
