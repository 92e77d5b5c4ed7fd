"""Teachers: loaded from a checkpoint, reused from the store, or trained as a first stage.

A trained teacher is keyed by everything that determines it (data, model, training recipe,
methods, seed); an experiment with the same key reuses it instead of training again.
"""

from __future__ import annotations

from torch import nn

from kdlab.config.schema import Experiment, TeacherSpec, stable_hash
from kdlab.data.base import DataBundle
from kdlab.engine import distributed as D
from kdlab.engine.checkpoint import load_model_state, read_checkpoint
from kdlab.pipelines.building import build_model
from kdlab.pipelines.context import RunContext
from kdlab.pipelines.training import train_stage
from kdlab.tasks.base import Task


def teacher_key(spec: TeacherSpec, exp: Experiment) -> str:
    train = spec.train or exp.train
    seed = spec.seed if spec.seed is not None else exp.seeds[0]
    return stable_hash(
        {
            "data": exp.data.model_dump(mode="json"),
            "model": spec.model.model_dump(mode="json"),
            "methods": [m.model_dump(mode="json") for m in spec.methods],
            "train": train.model_dump(mode="json"),
            "seed": seed,
        }
    )


def load_teacher(spec: TeacherSpec, data: DataBundle, path: str, role: str = "teacher") -> nn.Module:
    model = build_model(spec.model, data)
    ck = read_checkpoint(path)
    load_model_state(model, ck["model"], path, role)
    return model.eval()


def obtain_teacher(ctx: RunContext, spec: TeacherSpec, exp: Experiment, data: DataBundle, task: Task, index: int = 0) -> nn.Module:
    role = f"teacher {index}" if len(exp.all_teachers()) > 1 else "teacher"
    if spec.checkpoint:
        return load_teacher(spec, data, spec.checkpoint, role)
    key = teacher_key(spec, exp)
    found = ctx.store.find_done(key) if ctx.store is not None else None
    path = D.broadcast_object(str(found.ckpt("best")) if found is not None else None)
    if path is not None:
        ctx.log(f"{role}: reusing {found.id if found else 'stored teacher'} (same data, model, recipe and seed)")
        return load_teacher(spec, data, path, role)
    seed = spec.seed if spec.seed is not None else exp.seeds[0]
    train = spec.train or exp.train
    stage = train_stage(
        ctx,
        name=f"{exp.name}-teacher{index}",
        kind="teacher",
        model_spec=spec.model,
        method_specs=spec.methods,
        teachers=[],
        data=data,
        task=task,
        train=train,
        batch_size=exp.data.batch_size,
        eval_batch_size=exp.data.eval_batch_size,
        seed=seed,
        grp=key,
        key=key,
        config={"teacher_of": exp.name, **spec.model_dump(mode="json"), "train": train.model_dump(mode="json"),
                "data": exp.data.model_dump(mode="json"), "seed": seed},
        label=f"{role} {spec.model.name}",
    )
    # Distil from the best-on-validation weights, as the stored teacher would be.
    if stage.run_path is not None:
        D.barrier()
        return load_teacher(spec, data, str(stage.run_path) + "/checkpoints/best.pt", role)
    return stage.model.eval()


def obtain_teachers(ctx: RunContext, exp: Experiment, data: DataBundle, task: Task) -> list[nn.Module]:
    return [obtain_teacher(ctx, spec, exp, data, task, i) for i, spec in enumerate(exp.all_teachers())]
