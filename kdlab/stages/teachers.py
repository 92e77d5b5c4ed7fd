"""Teachers: loaded from a checkpoint, reused from the store, or trained as a first stage.

A trained teacher is keyed by everything that determines it (data, model, training recipe,
methods, seed); an experiment with the same key reuses it instead of training again.
"""

from __future__ import annotations

import contextlib

from torch import nn

from kdlab.config.schema import Experiment, MethodSpec, TeacherSpec, stable_hash
from kdlab.data.base import DataBundle
from kdlab.engine import distributed as D
from kdlab.errors import KdlabError
from kdlab.models.build import build_model
from kdlab.models.precision import hold_in
from kdlab.models.weights import load_weights
from kdlab.stages.building import load_data
from kdlab.stages.context import RunContext
from kdlab.stages.stage import Stage, run_stage
from kdlab.tasks.base import Task


def teacher_methods(spec: TeacherSpec, task: Task) -> list[MethodSpec]:
    return spec.methods if spec.methods else [MethodSpec(name=task.default_method)]


def teacher_key(spec: TeacherSpec, exp: Experiment, task: Task) -> str:
    train = spec.train or exp.train
    seed = spec.seed if spec.seed is not None else exp.seeds[0]
    return stable_hash(
        {
            # streamed or in memory, the same samples: the same teacher
            "data": (spec.data or exp.data).model_dump(mode="json", exclude={"stream", "workers", "memory_budget"}),
            "model": spec.model.model_dump(mode="json"),
            "methods": [m.model_dump(mode="json") for m in teacher_methods(spec, task)],
            "train": train.model_dump(mode="json"),
            "seed": seed,
        }
    )


def load_teacher(spec: TeacherSpec, data: DataBundle, path: str, role: str = "teacher") -> nn.Module:
    """The teacher's model with the weights at `path` (a kdlab checkpoint or state dict, a
    .safetensors file or a Hugging Face folder)."""
    return load_weights(build_model(spec.model, data, role), path, role).eval()


def check_same_tokenizer(own: DataBundle, data: DataBundle, role: str, own_name: str, data_name: str) -> None:
    """Text data tokenized differently for teacher and student (another vocabulary, even of the
    same size) is refused: their token ids would mean different words."""
    mine, theirs = own.meta.get("hf_tokenizer"), data.meta.get("hf_tokenizer")  # Hugging Face tokenizers
    if (mine or theirs) and (mine or {}).get("fingerprint") != (theirs or {}).get("fingerprint"):
        name = lambda t: f"'{t['path']}' ({t['size']} tokens)" if t else "no tokenizer"  # noqa: E731
        raise KdlabError(f"{role}'s data is tokenised by {name(mine)} but the student's by {name(theirs)}: "
                         "teacher and student must read the same token ids; use one tokenizer for both")
    a, b = own.meta.get("tokenizer"), data.meta.get("tokenizer")  # kdlab's word tokenizers
    if a is None or b is None or a.itos == b.itos:
        return
    if len(a.itos) != len(b.itos):
        diff = f"{len(a.itos)} and {len(b.itos)} tokens"
    else:
        i = next(i for i, (u, v) in enumerate(zip(a.itos, b.itos)) if u != v)
        diff = f"token {i} is {a.itos[i]!r} and {b.itos[i]!r}"
    raise KdlabError(f"{role}'s data ({own_name}) has another tokenizer than the student's ({data_name}): {diff}; "
                     "teacher and student must share one vocabulary: give both the same data settings")


def obtain_teacher(ctx: RunContext, spec: TeacherSpec, exp: Experiment, data: DataBundle, task: Task, index: int = 0) -> nn.Module:
    role = f"teacher {index}" if len(exp.all_teachers()) > 1 else "teacher"
    if spec.data is not None:
        own = load_data(spec.data).to(ctx.device)
        check_same_tokenizer(own, data, role, spec.data.name, exp.data.name)
        if own.num_classes != data.num_classes or tuple(own.input_shape) != tuple(data.input_shape):
            raise KdlabError(
                f"{role}'s data ({spec.data.name}: {own.num_classes} classes, input {tuple(own.input_shape)}) does not "
                f"match the student's ({exp.data.name}: {data.num_classes} classes, input {tuple(data.input_shape)})"
            )
        data = own
    if spec.checkpoint:
        return load_teacher(spec, data, spec.checkpoint, role)
    return train_or_reuse_teacher(
        ctx, spec, exp, data, task, key=teacher_key(spec, exp, task), role=role,
        name=f"{exp.name}-teacher{index}", data_spec=spec.data or exp.data,
    )


def train_or_reuse_teacher(
    ctx: RunContext, spec: TeacherSpec, exp: Experiment, data: DataBundle, task: Task, *, key: str, role: str,
    name: str, data_spec, extra_config: dict | None = None,
) -> nn.Module:
    """The stored teacher with this key if there is one, else train it as a stage and store it.
    Processes that need the same teacher at once queue on a lock: it is trained once."""
    with ctx.store.lock(key) if ctx.store is not None and ctx.env.main else contextlib.nullcontext():
        found = ctx.store.find_done(key) if ctx.store is not None and ctx.env.main else None
        path = D.broadcast_object(str(found.ckpt("best")) if found is not None else None)
        if path is not None:
            ctx.log(f"{role}: reusing {found.id if found else 'stored teacher'} (same data, model, recipe and seed)")
            return load_teacher(spec, data, path, role)
        seed = spec.seed if spec.seed is not None else exp.seeds[0]
        train = spec.train or exp.train
        stage = run_stage(ctx, Stage(
            name=name, kind="teacher", model=spec.model, methods=teacher_methods(spec, task), seed=seed, data=data,
            task=task, data_spec=data_spec, train=train, key=key, label=f"{role} {spec.model.source}",
            config={"teacher_of": exp.name, **spec.model_dump(mode="json"), "train": train.model_dump(mode="json"),
                    "data": data_spec.model_dump(mode="json"), "seed": seed, **(extra_config or {}),
                    "logging": exp.logging.model_dump(mode="json")},  # teachers log too
        ))
    # Distil from the best-on-validation weights, as the stored teacher would be.
    if stage.run_path is not None:
        return load_teacher(spec, data, stage.best_checkpoint(), role)
    return stage.model.eval()


def obtain_teachers(ctx: RunContext, exp: Experiment, data: DataBundle, task: Task) -> list[nn.Module]:
    """The teachers as they teach: trained or loaded in float32, then held in `teacher.dtype`."""
    return [hold_in(obtain_teacher(ctx, spec, exp, data, task, i), spec.dtype) for i, spec in enumerate(exp.all_teachers())]
