"""`on_policy`: on-policy distillation of language models (GKD; ImitKD's schedule and
DistiLLM's replay buffer as options). The recipe is `distill`'s (teacher, then every variant's
student on every seed) with the on-policy curriculum (kdlab.pipelines.on_policy_curriculum)
deciding each batch: the data's, or the student's own continuations scored by the teacher."""

from __future__ import annotations

from kdlab.config.schema import Experiment
from kdlab.pipelines.distill import ExperimentResult, new_result
from kdlab.pipelines.lm_checks import check_lm_recipe
from kdlab.pipelines.on_policy_curriculum import OnPolicyCurriculum, OnPolicyParams
from kdlab.registry import PIPELINES
from kdlab.stages.building import load_data, preflight
from kdlab.stages.context import RunContext
from kdlab.stages.stage import run_stage, student_stage
from kdlab.stages.teachers import obtain_teachers
from kdlab.tasks.base import get_task


def check_on_policy(exp: Experiment, data, task, p: OnPolicyParams) -> None:
    check_lm_recipe(exp, data, task, "on_policy", p.prompt_len, decoders=("student",), length=int(data.input_shape[0]),
                    length_what="the data's sequence length")


@PIPELINES.register("on_policy", "on-policy LM distillation (GKD): with probability lam a batch is the student's own "
                    "continuations, scored by the teacher; imitkd schedule and replay buffer as options",
                    "GKD, Agarwal et al. 2024, arXiv:2306.13649; ImitKD, Lin et al. 2020; DistiLLM, Ko et al. 2024",
                    params=OnPolicyParams)
def run_on_policy(exp: Experiment, ctx: RunContext) -> ExperimentResult:
    p: OnPolicyParams = exp.pipeline.params()
    data = load_data(exp.data).to(ctx.device)
    task = get_task(data)
    check_on_policy(exp, data, task, p)
    preflight(exp, data, task, ctx.device)
    teachers = obtain_teachers(ctx, exp, data, task)
    out = new_result(exp, data, task, teachers)
    sets = exp.method_sets()
    for variant, methods in sets.items():
        for seed in exp.seeds:
            stage = run_stage(ctx, student_stage(exp, data, task, methods=methods, seed=seed, variant=variant,
                                                 teachers=teachers, curriculum=OnPolicyCurriculum(p, exp.train.epochs)))
            out.results.setdefault(variant, []).append(stage.row())
    out.baseline = "ce" if "ce" in sets else None
    return out
