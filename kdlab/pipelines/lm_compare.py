"""`lm_compare`: one study of language-model distillation recipes under one budget.

Every variant trains the experiment's student on every seed with the same data, optimiser,
epochs and batches; a variant named in `recipes` trains by that recipe instead of the plain
one: `seqkd` (on the teacher's outputs, generated once and stored) or `on_policy` (GKD: a
share of the batches are the student's own continuations). The teacher is obtained once
(trained as the first stage, or reused from the store by its key) and serves every variant.
The table reports test perplexity (mean ± std over seeds), its difference to the CE student
of the same seed (mean ± std over seeds), optimiser steps, tokens read and wall time per run;
below it, a continuation sampled from each variant's first-seed student (and the teacher) for
the same test prompt with the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal, Union

import torch
from pydantic import BaseModel, ConfigDict, Field

from kdlab.config.schema import Experiment, needs_teacher
from kdlab.data.hf_text import load_tokenizer
from kdlab.errors import KdlabError
from kdlab.models.decoding import DecodeSpec, can_decode, continue_tokens
from kdlab.pipelines.distill import ExperimentResult, new_result
from kdlab.pipelines.lm_on_policy import check_on_policy
from kdlab.pipelines.lm_seqkd import SeqKDParams, check_seqkd, seqkd_data, seqkd_row
from kdlab.pipelines.on_policy_curriculum import OnPolicyCurriculum, OnPolicyParams
from kdlab.registry import PIPELINES
from kdlab.report.stats import fmt, mean_std
from kdlab.report.tables import comparison_rows, markdown_table, rich_table
from kdlab.stages.building import load_data, preflight
from kdlab.stages.context import RunContext
from kdlab.stages.stage import run_stage, student_stage
from kdlab.stages.teachers import obtain_teachers
from kdlab.tasks.base import get_task


class SeqKDRecipe(SeqKDParams):
    name: Literal["seqkd"]


class OnPolicyRecipe(OnPolicyParams):
    name: Literal["on_policy"]


class SampleSpec(BaseModel):
    """The continuation shown for every student: the first `prompt_len` tokens of the first
    test window, continued by `gen_len` sampled tokens (the same seed for every model)."""
    model_config = ConfigDict(extra="forbid")
    prompt_len: int = Field(16, ge=1)
    gen_len: int = Field(32, ge=0)  # 0: no samples
    temperature: float = Field(1.0, gt=0)
    seed: int = 0


class CompareParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # variant name -> the recipe it trains by (variants not named here: the plain one)
    recipes: dict[str, Annotated[Union[SeqKDRecipe, OnPolicyRecipe], Field(discriminator="name")]] = Field(
        default_factory=dict)
    sample: SampleSpec = Field(default_factory=SampleSpec)


@dataclass
class LMComparison:
    result: ExperimentResult
    batches: dict[str, int] = field(default_factory=dict)  # variant -> optimiser steps per epoch
    tokens: dict[str, int] = field(default_factory=dict)  # variant -> input tokens per epoch
    samples: dict[str, str] = field(default_factory=dict)  # model -> prompt + sampled continuation
    prompt: str = ""

    def rows(self) -> tuple[list[str], list[list[str]]]:
        res = self.result
        header, rows = comparison_rows(res.results, res.metric, res.baseline)
        # A seed gives every variant the same initial student and batch order: the difference to
        # the baseline of the same seed leaves out what the arms share within a seed.
        base = {r.get("seed"): r.get(f"test_{res.metric}") for r in res.results.get(res.baseline or "", [])}
        paired = bool(base)
        if paired:
            header.append(f"− {res.baseline}, same seed (last epoch)")
        header = [*header, "steps", "tokens", "wall s / run"]
        for row in rows:
            runs = res.results[row[0]]
            if paired:
                diffs = [r[f"test_{res.metric}"] - base[r.get("seed")] for r in runs if r.get("seed") in base]
                row.append("–" if row[0] == res.baseline or not diffs else "{:+.2f} ± {:.2f}".format(*mean_std(diffs)))
            epochs = runs[0].get("epochs", 0)
            wall = [r.get("mean_epoch_time", 0.0) * r.get("epochs", 0) for r in runs]
            row += [f"{epochs * self.batches.get(row[0], 0):,}", f"{epochs * self.tokens.get(row[0], 0):,}",
                    fmt(*mean_std(wall), digits=0)]
        return header, rows

    def render(self):
        from rich.console import Group
        from rich.text import Text

        lines = list(self.result.render().renderables[:-1])  # the teachers and notes
        out = [*lines, rich_table(*self.rows(), title=self.result.name)]
        if self.samples:
            out.append(Text(f"samples (prompt: {self.prompt!r}):"))
            out += [Text(f"  {name}: {text!r}") for name, text in self.samples.items()]
        return Group(*out)

    def markdown(self) -> str:
        return markdown_table(*self.rows())


def decode_text(data, ids: torch.Tensor) -> str:
    """Token ids as text, through the data's tokenizer."""
    hf = data.meta.get("hf_tokenizer")
    if hf is not None:
        return load_tokenizer(hf["path"]).decode(ids.tolist())
    tok = data.meta.get("tokenizer")
    return tok.decode(ids.tolist()) if tok is not None else " ".join(map(str, ids.tolist()))


def sample_text(model, data, spec: SampleSpec) -> str:
    prompt = data.test.tensors["x"][:1, : spec.prompt_len]
    out = continue_tokens(model, prompt, spec.gen_len, DecodeSpec(strategy="sample", temperature=spec.temperature,
                                                                   seed=spec.seed))
    return decode_text(data, out[0].cpu())


@PIPELINES.register("lm_compare", "LM distillation recipes in one study under one budget: token-level divergences, "
                    "seqkd and on_policy variants from one teacher; test perplexity, steps, tokens, wall time, samples",
                    params=CompareParams, teacher_cache=True)  # read by its token-level arms only
def run_lm_compare(exp: Experiment, ctx: RunContext) -> LMComparison:
    p: CompareParams = exp.pipeline.params()
    sets = exp.method_sets()
    unknown = sorted(set(p.recipes) - set(sets))
    if unknown:
        raise KdlabError(f"pipeline.recipes names {', '.join(unknown)}, which {'is' if len(unknown) == 1 else 'are'} not "
                         f"among the variants ({', '.join(sets)}): a recipe is given to a variant by its name")
    data = load_data(exp.data).to(ctx.device)
    task = get_task(data)
    if task.name != "lm":
        raise KdlabError(f"pipeline 'lm_compare' compares language models, but data '{exp.data.name}' is a {task.name} "
                         "dataset: use a text dataset (pydoc_bpe, pydoc, text)")
    for r in p.recipes.values():
        (check_seqkd if r.name == "seqkd" else check_on_policy)(exp, data, task, r)
    preflight(exp, data, task, ctx.device)
    teachers = obtain_teachers(ctx, exp, data, task)
    out = LMComparison(new_result(exp, data, task, teachers))
    res = out.result
    res.baseline = "ce" if "ce" in sets else None
    batch = exp.data.batch_size
    for variant, methods in sets.items():
        recipe = p.recipes.get(variant)
        readers = teachers if any(needs_teacher(m) for m in methods) else []
        train = data
        if recipe is not None and recipe.name == "seqkd":
            train, gen, note = seqkd_data(ctx, exp, data, teachers[0], recipe)
            res.notes.append(f"{variant}: {note}")
        n = len(train.train)
        out.batches[variant] = -(-n // batch)
        out.tokens[variant] = n * int(train.train.tensors["x"].shape[1])
        for seed in exp.seeds:
            if recipe is not None and recipe.name == "seqkd":
                row, model = seqkd_row(ctx, exp, train, task, gen, teachers, methods=methods, seed=seed, variant=variant)
            else:
                curriculum = OnPolicyCurriculum(recipe, exp.train.epochs) if recipe is not None else None
                # The teachers' output cache holds the data's batches, not the student's own continuations.
                cache = [t.cache for t in exp.all_teachers()] if recipe is None else []
                stage = run_stage(ctx, student_stage(exp, data, task, methods=methods, seed=seed, variant=variant,
                                                     teachers=readers, curriculum=curriculum, teacher_cache=cache))
                row, model = stage.row(), stage.model
            res.results.setdefault(variant, []).append(row)
            if seed == exp.seeds[0] and p.sample.gen_len and can_decode(model):
                out.samples[variant] = sample_text(model, data, p.sample)
    if p.sample.gen_len and teachers and can_decode(teachers[0]):
        out.samples = {"teacher": sample_text(teachers[0], data, p.sample), **out.samples}
    out.prompt = decode_text(data, data.test.tensors["x"][0, : p.sample.prompt_len].cpu())
    return out
