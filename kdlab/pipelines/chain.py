"""Teacher-assistant chains (TAKD): teacher -> assistant 1 -> ... -> student, each link an
ordinary distillation stage with the experiment's methods; the trained link (its
best-on-validation weights) teaches the next one."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from kdlab.config.schema import CacheSpec, Experiment, MethodSpec, ModelSpec, TeacherSpec
from kdlab.engine.evaluation import evaluate
from kdlab.errors import KdlabError
from kdlab.models.build import count_params
from kdlab.registry import PIPELINES
from kdlab.stages.building import load_data
from kdlab.stages.context import RunContext
from kdlab.stages.stage import run_stage, student_stage
from kdlab.stages.teachers import load_teacher, obtain_teachers
from kdlab.tasks.base import get_task


class TAKDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # The assistants, from the largest (taught by the teacher) to the smallest (teaching the student).
    assistants: list[ModelSpec] = Field(min_length=1)
    # Also train the student directly from the teacher with the same methods, for comparison.
    direct: bool = False


@dataclass
class LinkResult:
    role: str  # teacher, assistant i, student, student (direct)
    model: str
    params: int
    runs: list[dict] = field(default_factory=list)  # per seed: test_<metric>, best_test_<metric>, run_id


@dataclass
class ChainResult:
    name: str
    metric: str
    # variant -> links in chain order
    chains: dict[str, list[LinkResult]] = field(default_factory=dict)

    def rows(self) -> tuple[list[str], list[list[str]]]:
        from kdlab.report.stats import fmt, mean_std

        m = self.metric
        several = len(self.chains) > 1
        header = ["link", "model", "params", "seeds", f"test {m} (last epoch)", f"test {m} (best-val epoch)"]
        header = ["variant", *header] if several else header
        rows = []
        for variant, links in self.chains.items():
            for link in links:
                last = [r.get(f"test_{m}") for r in link.runs]
                best = [r.get(f"best_test_{m}", r.get(f"test_{m}")) for r in link.runs]
                # One run (the teacher): a value, not a mean with a meaningless zero spread.
                show = (lambda v: fmt(v[0])) if len(link.runs) == 1 else (lambda v: fmt(*mean_std(v)))
                row = [link.role, link.model, f"{link.params:,}", str(len(link.runs)), show(last), show(best)]
                rows.append([variant, *row] if several else row)
        return header, rows

    def render(self):
        from kdlab.report.tables import rich_table

        header, rows = self.rows()
        return rich_table(header, rows, title=f"{self.name}: teacher-assistant chain")


def _single_teacher(exp: Experiment) -> TeacherSpec:
    specs = exp.all_teachers()
    if len(specs) != 1:
        raise KdlabError(
            f"pipeline 'takd' distils a chain from one teacher, but the config gives {len(specs)}: "
            "use a single `teacher:` section"
        )
    return specs[0]


@PIPELINES.register(
    "takd",
    "teacher-assistant chain: teacher -> assistants -> student, each link distilled with the experiment's methods",
    "Mirzadeh et al. 2020, arXiv:1902.03393",
    params=TAKDParams,
    teacher_cache=True,
)
def run_takd(exp: Experiment, ctx: RunContext) -> ChainResult:
    params: TAKDParams = exp.pipeline.params()
    t_spec = _single_teacher(exp)
    data = load_data(exp.data).to(ctx.device)
    task = get_task(data)
    teacher = obtain_teachers(ctx, exp, data, task)[0]
    metric = task.primary_metric
    t_eval = evaluate(teacher, data.test, task, data.prepare, exp.data.eval_batch_size)
    out = ChainResult(exp.name, metric)
    chain_specs = [*params.assistants, exp.student]
    for variant, methods in exp.method_sets().items():
        links = [LinkResult("teacher", t_spec.model.source, count_params(teacher), [{f"test_{k}": v for k, v in t_eval.items()}])]
        links += [LinkResult(f"assistant {i + 1}", s.name, 0) for i, s in enumerate(params.assistants)]
        links.append(LinkResult("student", exp.student.source, 0))
        if params.direct:
            links.append(LinkResult("student (direct)", exp.student.source, 0))
        for seed in exp.seeds:
            current = teacher
            for i, spec in enumerate(chain_specs):
                current = _train_link(ctx, exp, variant, methods, spec, current, i, len(chain_specs), seed,
                                      chain_specs[: i + 1], links[i + 1], data, task, _link_cache(t_spec, i))
            if params.direct:
                _train_link(ctx, exp, variant, methods, exp.student, teacher, -1, len(chain_specs), seed,
                            [exp.student], links[-1], data, task, t_spec.cache)
        out.chains[variant] = links
    return out


def _link_cache(t_spec: TeacherSpec, i: int) -> Optional[CacheSpec]:
    """teacher.cache applies to every link: an assistant's outputs are cached like the teacher's
    (keyed by its weights, so each trained assistant gets its own cache, in the store; a
    `path` names the teacher's cache only). Each link then runs its teacher once, not every epoch."""
    if t_spec.cache is None or i == 0:
        return t_spec.cache
    return t_spec.cache.model_copy(update={"path": None})


def _train_link(ctx, exp, variant, methods: list[MethodSpec], spec: ModelSpec, teacher: nn.Module, i: int, n: int,
                seed: int, chain: list[ModelSpec], link: LinkResult, data, task, cache: Optional[CacheSpec]) -> nn.Module:
    """Train link i of the chain (i = -1: the direct student) and return its best-on-validation model."""
    is_student = i == n - 1 or i < 0
    tag = "direct" if i < 0 else ("student" if is_student else f"ta{i + 1}")
    stage = run_stage(ctx, student_stage(
        exp, data, task, methods=methods, seed=seed, variant=f"{variant}-{tag}", teachers=[teacher], model=spec,
        name=exp.name if is_student else f"{exp.name}-{tag}", kind="student" if is_student else "assistant",
        label=f"{tag} {spec.source} seed {seed}",
        record={"takd_link": tag, "takd_chain": [c.model_dump(mode="json") for c in chain]}, teacher_cache=[cache],
    ))
    link.params = stage.summary.get("params", count_params(stage.model))
    link.runs.append(stage.row())
    # Every rank continues from the same weights: the best checkpoint (run_stage ends at a barrier).
    path = stage.best_checkpoint()
    if path is not None:
        return load_teacher(TeacherSpec(model=spec), data, path, tag)
    return stage.model.eval()
