"""DistilBERT-style initialisation: a Hugging Face student takes its teacher's embeddings and
other shared weights, a chosen subset of the teacher's transformer layers (every other one by
default, as DistilBERT did), and the head where its shapes match. Teacher and student must be
the same architecture, differing only in their number of layers (and head)."""

from __future__ import annotations

from typing import Sequence, Union

from torch import nn

from kdlab.errors import KdlabError
from kdlab.models.weights import is_hf_model


def transformer_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The path and list of a Hugging Face model's transformer blocks (BERT's encoder.layer,
    GPT-2's h, ...): the list of `config.num_hidden_layers` blocks of one type."""
    n = getattr(model.config, "num_hidden_layers", None)
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and n and len(m) == n and len({type(b) for b in m}) == 1:
            return name, m
    raise KdlabError(f"init_from_teacher: cannot find the transformer layers of {type(model).__name__} (no list of "
                     f"config.num_hidden_layers = {n} blocks)")


def chosen_layers(layers: Union[str, Sequence[int]], teacher_count: int) -> list[int]:
    if layers == "every_other":
        return list(range(0, teacher_count, 2))
    bad = [i for i in layers if not 0 <= i < teacher_count]
    if bad:
        raise KdlabError(f"init_from_teacher.layers: {bad[0]} is not a teacher layer (the teacher has "
                         f"{teacher_count}: 0..{teacher_count - 1})")
    return list(layers)


def init_from_teacher(student: nn.Module, teacher: nn.Module, layers: Union[str, Sequence[int]] = "every_other") -> str:
    """Copy the teacher's weights into `student` (in place); returns what was copied, in words."""
    for role, m in (("teacher", teacher), ("student", student)):
        if not is_hf_model(m):
            raise KdlabError(f"init_from_teacher maps the layers of Hugging Face models; the {role} is a "
                             f"{type(m).__name__}: give it an hf source or drop init_from_teacher")
    t_type, s_type = teacher.config.model_type, student.config.model_type
    if t_type != s_type:
        raise KdlabError(f"init_from_teacher: the teacher is a {t_type} and the student a {s_type}; layers are only "
                         "copied between models of one architecture")
    t_path, t_list = transformer_layers(teacher)
    s_path, s_list = transformer_layers(student)
    chosen = chosen_layers(layers, len(t_list))
    if len(chosen) != len(s_list):
        raise KdlabError(f"init_from_teacher: the student has {len(s_list)} layers but {len(chosen)} teacher layers "
                         f"are chosen ({', '.join(map(str, chosen))}); give the student {len(chosen)} layers "
                         f"(num_hidden_layers, n_layer for GPT-2) or choose {len(s_list)} in init_from_teacher.layers")
    t_state, s_state = teacher.state_dict(), student.state_dict()
    body = (f"{student.base_model_prefix}.", f"{s_path}.")
    copied, head_kept = {}, []
    for key, value in s_state.items():
        src = key
        if key.startswith(f"{s_path}."):
            index, rest = key[len(s_path) + 1 :].split(".", 1)
            src = f"{t_path}.{chosen[int(index)]}.{rest}"
        found = t_state.get(src)
        if found is None or found.shape != value.shape:
            if key.startswith(body):  # the body must map wholly; only a head may differ
                have = "is absent" if found is None else f"has shape {list(found.shape)}"
                raise KdlabError(f"init_from_teacher: student weight {key} {list(value.shape)} cannot be taken from the "
                                 f"teacher ({src} {have}); teacher and student may differ only in their number of "
                                 "layers (same hidden size, heads and vocabulary)")
            head_kept.append(key)
            continue
        copied[key] = found.detach().clone()
    student.load_state_dict({**s_state, **copied})
    head = f"head left as initialised ({head_kept[0]} differs)" if head_kept else "head copied"
    return (f"student initialised from the teacher: embeddings, teacher layers {', '.join(map(str, chosen))} as "
            f"student layers 0..{len(chosen) - 1}, {head} ({len(copied)} of {len(s_state)} tensors)")
