"""What sequence-level and on-policy distillation of language models refuse before anything
trains, each in one line: data that is not language modelling, a prompt longer than the
data's windows, a teacher and student with different vocabularies, a model that cannot decode
token by token, or sequences longer than a model's positions."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from kdlab.config.schema import Experiment
from kdlab.data.base import DataBundle
from kdlab.errors import KdlabError
from kdlab.models.build import build_model
from kdlab.knowledge.adapters import call_model, logits_of
from kdlab.models.decoding import can_decode, positions_field, positions_of
from kdlab.stages.building import load_data
from kdlab.stages.teachers import check_same_tokenizer
from kdlab.tasks.base import Task


def check_lm_recipe(exp: Experiment, data: DataBundle, task: Task, recipe: str, prompt_len: int, *,
                    decoders: tuple[str, ...], length: int, length_what: str) -> None:
    """`decoders`: the roles ("teacher", "student") that generate; `length`: the tokens every
    model must hold in one sequence."""
    if task.name != "lm":
        raise KdlabError(f"pipeline '{recipe}' distils language models, but data '{exp.data.name}' is a {task.name} "
                         "dataset: use a text dataset (pydoc, text)")
    seq_len = int(data.input_shape[0])
    if prompt_len > seq_len:
        raise KdlabError(f"pipeline '{recipe}': prompt_len {prompt_len} exceeds the data's sequence length {seq_len} "
                         "(prompts are cut from the training windows): lower prompt_len or raise data.params.seq_len")
    teachers = exp.all_teachers()
    if len(teachers) != 1:
        raise KdlabError(f"pipeline '{recipe}' needs exactly one teacher (a `teacher:` section); got {len(teachers)}")
    t_data = load_data(teachers[0].data) if teachers[0].data is not None else data
    if teachers[0].data is not None:
        check_same_tokenizer(t_data, data, "teacher", teachers[0].data.name, exp.data.name)
    models = {"student": (exp.student, build_model(exp.student, data, "student")),
              "teacher": (teachers[0].model, build_model(teachers[0].model, t_data, "teacher"))}
    vocab = {role: _vocab(model, data, f"{role} ({spec.source})") for role, (spec, model) in models.items()}
    if vocab["teacher"] != vocab["student"]:
        raise KdlabError(f"teacher ({models['teacher'][0].source}) and student ({models['student'][0].source}) have "
                         f"different vocabularies ({vocab['teacher']} and {vocab['student']} tokens): distilling "
                         "language models needs one tokenizer; build both for the same data")
    for role, (spec, model) in models.items():
        if role in decoders and not can_decode(model):
            raise KdlabError(f"pipeline '{recipe}': the {role} ({spec.source}) cannot decode token by token; use "
                             "lstm_lm, transformer_lm or a Hugging Face causal LM (hf.kind causal_lm)")
        limit = positions_of(model)
        if limit is not None and length > limit:
            raise KdlabError(f"pipeline '{recipe}': the {role} ({spec.source}) holds {limit} positions but "
                             f"{length_what} is {length} tokens: raise its {positions_field(model)} or shorten")


def _vocab(model: nn.Module, data: DataBundle, who: str) -> Optional[int]:
    """The width of the model's logits on one training window."""
    x = data.train.head(1)["x"].cpu()  # in memory or streamed
    try:
        with torch.no_grad():
            return int(logits_of(call_model(model.eval(), x), model).shape[-1])
    except (IndexError, RuntimeError) as e:
        raise KdlabError(f"the {who} cannot read the data's token ids (vocabulary of {data.num_classes} tokens): "
                         f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__}") from None
