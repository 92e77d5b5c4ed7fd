"""DIST: distillation from a stronger teacher by matching correlations of predictions
rather than exact probabilities."""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

from kdlab.methods.base import Method, MethodParams, one_teacher, register_method
from kdlab.methods.logit_utils import check_same_width

# The official code adds 1e-8 to the norm product; it only matters for constant rows.
EPS = 1e-8


def pearson_rows(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of each row of `a` with the same row of `b` (shape [N])."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + EPS)


def dist_terms(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """(inter, intra) of Huang et al. 2022, each tau^2-scaled:
    inter = 1 - mean over samples of corr(p_s[i, :], p_t[i, :]) (class ranking per sample);
    intra = 1 - mean over classes of corr(p_s[:, c], p_t[:, c]) (sample ranking per class)."""
    ps = (student_logits.float() / tau).softmax(1)
    pt = (teacher_logits.float() / tau).softmax(1)
    inter = 1 - pearson_rows(ps, pt).mean()
    intra = 1 - pearson_rows(ps.t(), pt.t()).mean()
    return inter * tau * tau, intra * tau * tau


@register_method(
    "dist",
    "DIST: beta*(1 - inter-class Pearson corr) + gamma*(1 - intra-class Pearson corr) of the "
    "softened probabilities",
    "Huang et al. 2022, arXiv:2205.10536",
)
class DIST(Method):
    class Params(MethodParams):
        # The official code's defaults (beta = gamma = tau = 1).
        beta: float = Field(1.0, ge=0)
        gamma: float = Field(1.0, ge=0)
        tau: float = Field(1.0, gt=0)

    def forward(self, batch, student, teachers):
        p = self.params
        t = one_teacher(teachers, self.name)
        check_same_width(self.name, student.logits, [t.logits])
        inter, intra = dist_terms(student.logits, t.logits, p.tau)
        return {"dist_inter": p.beta * inter, "dist_intra": p.gamma * intra}
