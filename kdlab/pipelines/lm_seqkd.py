"""`seqkd`: sequence-level knowledge distillation (Kim & Rush 2016, arXiv:1606.07947).

The teacher (trained or loaded as in `distill`) continues the first `prompt_len` tokens of
every training window with `gen_len` tokens of its own (greedy, beam or sampled: `decode`),
once; the outputs are kept in the run store and reused by every student of that teacher
(kdlab.stages.generations). Each student then trains on the sequences prompt + teacher output:
input the first prompt_len + gen_len − 1 tokens, targets the next tokens, the positions whose
target is a prompt token labelled −100 (not trained). The experiment's methods are the loss:
`ce` alone is Kim & Rush's sequence-level KD; adding a token-level divergence (`fkl`, `jsd`,
...) mixes in word-level KD on the same tokens. Validation and test stay the data's own text.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from pydantic import BaseModel, ConfigDict, Field

from kdlab.config.schema import Experiment, needs_teacher
from kdlab.data.base import DataBundle, Split
from kdlab.models.decoding import DecodeSpec
from kdlab.pipelines.distill import ExperimentResult, new_result
from kdlab.pipelines.lm_checks import check_lm_recipe
from kdlab.registry import PIPELINES
from kdlab.stages.building import load_data, preflight
from kdlab.stages.context import RunContext
from kdlab.stages.generations import Generations, teacher_generations
from kdlab.stages.stage import run_stage, student_stage
from kdlab.stages.teachers import obtain_teachers
from kdlab.tasks.base import get_task

IGNORE = -100


class SeqKDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt_len: int = Field(8, ge=1)  # tokens of each training window given to the teacher
    gen_len: int = Field(16, ge=1)  # tokens the teacher adds
    decode: DecodeSpec = Field(default_factory=DecodeSpec)
    batch_size: int = Field(64, ge=1)  # prompts per generation call


def seqkd_split(prompts: torch.Tensor, outputs: torch.Tensor) -> Split:
    """Training pairs from prompt + output: x = all but the last token, y = the next tokens,
    with −100 where the next token is still part of the prompt."""
    seq = torch.cat([prompts, outputs], dim=1)
    x, y = seq[:, :-1].clone(), seq[:, 1:].clone()
    y[:, : prompts.shape[1] - 1] = IGNORE
    return Split({"x": x, "y": y})


def check_seqkd(exp: Experiment, data: DataBundle, task, p: SeqKDParams) -> None:
    check_lm_recipe(exp, data, task, "seqkd", p.prompt_len, decoders=("teacher",),
                    length=p.prompt_len + p.gen_len - 1, length_what="prompt_len + gen_len - 1")


def seqkd_data(ctx: RunContext, exp: Experiment, data: DataBundle, teacher, p: SeqKDParams) -> tuple[DataBundle, Generations, str]:
    """The data with its training split replaced by prompt + the teacher's outputs (made once,
    stored, reused), the generations, and a note saying where they are."""
    # every training window's prompt (read chunk by chunk when streamed; prompts are small)
    prompts = torch.cat([chunk["x"][:, : p.prompt_len] for chunk in data.train.chunks(4096)]).to(ctx.device)
    # the prompts' identity: streamed or in memory, the same windows
    data_record = exp.data.model_dump(mode="json", exclude={"batch_size", "eval_batch_size", "stream", "workers",
                                                            "memory_budget"})
    gen = teacher_generations(ctx, teacher, prompts, p.gen_len, p.decode, data_record, p.batch_size)
    where = f"stored in {gen.path}" if gen.path else "not stored (no run store)"
    note = f"teacher outputs: {len(prompts)} x {p.gen_len} tokens, {'generated' if gen.made else 'reused'}, {where}"
    return dataclasses.replace(data, train=seqkd_split(prompts, gen.outputs)), gen, note


def seqkd_row(ctx: RunContext, exp: Experiment, seq_data: DataBundle, task, gen: Generations, teachers, *,
              methods, seed: int, variant: str) -> tuple[dict, nn.Module]:
    """Train one student on the teacher's outputs: its row of the result table, and the student."""
    readers = teachers if any(needs_teacher(m) for m in methods) else []
    stage = run_stage(ctx, student_stage(exp, seq_data, task, methods=methods, seed=seed, variant=variant,
                                         teachers=readers, record={"seqkd_generations": gen.key}))
    return {**stage.row(), "generations": gen.key, "generated": gen.made}, stage.model


@PIPELINES.register("seqkd", "sequence-level KD: students train on the teacher's generated continuations of the "
                    "training prompts (generated once, stored, reused)", "Kim & Rush 2016, arXiv:1606.07947",
                    params=SeqKDParams)
def run_seqkd(exp: Experiment, ctx: RunContext) -> ExperimentResult:
    p: SeqKDParams = exp.pipeline.params()
    data = load_data(exp.data).to(ctx.device)
    task = get_task(data)
    check_seqkd(exp, data, task, p)
    preflight(exp, data, task, ctx.device)
    teachers = obtain_teachers(ctx, exp, data, task)
    seq_data, gen, note = seqkd_data(ctx, exp, data, teachers[0], p)
    out = new_result(exp, data, task, teachers)
    out.notes.append(note)
    sets = exp.method_sets()
    out.baseline = "ce" if "ce" in sets else None
    for variant, methods in sets.items():
        for seed in exp.seeds:
            row, _ = seqkd_row(ctx, exp, seq_data, task, gen, teachers, methods=methods, seed=seed, variant=variant)
            out.results.setdefault(variant, []).append(row)
    return out
