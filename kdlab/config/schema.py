"""The experiment schema. Every field a user can set is here, with its type and range."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator

from kdlab.config.imports import accepted_kwargs, resolve_callable
from kdlab.config.numbers import Float, Int, refuse_bools
from kdlab.config.signature import validate_params
from kdlab.config.tuning import LoggingSpec, TuneSpec, check_paths
from kdlab.errors import KdlabError
from kdlab.registry import DATASETS, METHODS, MODELS, PIPELINES


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def check_device(v: str) -> str:
    """`v` if it names a device kdlab can use, else ValueError listing the choices."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", v):
        raise ValueError(f"device must be {DEVICE_CHOICES} (got {v!r})")
    return v


def _lookup(registry, name: str):
    try:
        return registry.get(name)
    except KdlabError as e:  # pydantic needs ValueError to attach the field location
        raise ValueError(str(e)) from None


HF_KINDS = ("auto", "causal_lm", "masked_lm", "sequence_classification", "token_classification",
            "image_classification")


class HFSpec(Strict):
    """A Hugging Face transformers model: loaded from a local folder (`path`: config.json and
    .safetensors weights, never downloaded) or built randomly initialised from `config` (a dict
    with `model_type` and the config's fields). `kind` picks the head; `auto` takes the
    config's `architectures`."""

    path: Optional[str] = None
    config: Optional[dict[str, Any]] = None
    kind: Literal[HF_KINDS] = "auto"  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _check(self):
        if (self.path is None) == (self.config is None):
            raise ValueError("give hf.path (a local model folder) or hf.config (a dict with model_type), exactly one")
        if self.config is not None and not isinstance(self.config.get("model_type"), str):
            raise ValueError("hf.config needs a model_type (e.g. bert, gpt2, vit) beside the config's fields")
        return self


class InitFromTeacherSpec(Strict):
    """DistilBERT-style initialisation of a Hugging Face student from its teacher: embeddings
    and the other shared weights, the chosen teacher layers (`every_other`: 0, 2, 4, ...; or a
    list of indices) as the student's layers in order, and the head where its shapes match."""

    layers: Union[Literal["every_other"], list[Annotated[Int, Field(ge=0)]]] = "every_other"

    @field_validator("layers")
    @classmethod
    def _distinct(cls, v):
        if isinstance(v, list) and (not v or len(set(v)) != len(v)):
            raise ValueError(f"init_from_teacher.layers lists distinct teacher layer indices (got {v})")
        return v


class ModelSpec(Strict):
    """One source of the model, exactly one of: `name` (kdlab's zoo, `params` its arguments),
    `import` ('package.module:callable' returning an nn.Module, `params` its arguments) or
    `hf` (a Hugging Face transformers model)."""

    model_config = ConfigDict(extra="forbid", validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)
    name: Optional[str] = None
    import_: Optional[str] = Field(None, alias="import")
    hf: Optional[HFSpec] = None
    params: dict[str, Any] = Field(default_factory=dict)
    # Only for a model trained on another label set than the data's (rare): checked against the student.
    num_classes: Optional[Int] = Field(None, ge=1)
    # Initial weights: a .safetensors file, a kdlab checkpoint or state dict, or a Hugging Face folder.
    weights: Optional[str] = None
    # A Hugging Face student initialised from its teacher's own layers (DistilBERT-style).
    init_from_teacher: Optional[InitFromTeacherSpec] = None

    @model_validator(mode="after")
    def _check(self):
        if self.init_from_teacher is not None and (self.hf is None or self.weights):
            raise ValueError("init_from_teacher copies a Hugging Face teacher's layers into an hf student: it needs "
                             "an hf source and no weights")
        given = [k for k, v in (("name", self.name), ("import", self.import_), ("hf", self.hf)) if v is not None]
        if len(given) != 1:
            raise ValueError("a model section needs exactly one source: name (kdlab's zoo), import "
                             f"('package.module:callable') or hf (a Hugging Face model); got {', '.join(given) or 'none'}")
        if self.name is not None:
            entry = _lookup(MODELS, self.name)
            self.params = validate_params(entry.obj, self.params, f"model '{self.name}'")
        elif self.import_ is not None:
            fn = resolve_callable(self.import_)
            if not accepted_kwargs(fn)[1]:  # a signature without **kwargs: check the keys now
                self.params = validate_params(fn, self.params, f"model '{self.import_}'")
        elif self.params:
            raise ValueError("an hf model takes its settings in hf.config (or its folder's config.json), not params")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        # Unset sources and weights are left out, so a zoo model's record (and the hashes that
        # group runs and find stored teachers) reads as it did before they existed.
        out = handler(self)
        return {k: v for k, v in out.items() if v is not None or k not in ("name", "import", "import_", "hf", "weights",
                                                                         "init_from_teacher")}

    @property
    def source(self) -> str:
        """How the model is named in messages and tables."""
        if self.name is not None:
            return self.name
        if self.import_ is not None:
            return self.import_
        return self.hf.path or f"hf {self.hf.config['model_type']}"


class DataSpec(Strict):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    batch_size: Int = Field(64, ge=1)
    eval_batch_size: Int = Field(1024, ge=1)
    split_seed: Int = 0  # the train/val/test split; fixed across training seeds
    # Keep a seeded, stratified fraction of the training split (val and test are untouched):
    # e.g. a student distilled on a small transfer set from a teacher trained on all of it.
    train_fraction: Float = Field(1.0, gt=0, le=1)
    # Read samples on demand by worker processes (true), hold the data in memory (false), or
    # stream when the data is larger than memory_budget (GB; default a quarter of the RAM).
    stream: Union[bool, Literal["auto"]] = "auto"
    workers: Int = Field(2, ge=0)  # loader processes of a streamed split
    memory_budget: Optional[Float] = Field(None, gt=0)

    @model_validator(mode="after")
    def _check(self):
        entry = _lookup(DATASETS, self.name)
        self.params = validate_params(entry.obj, self.params, f"dataset '{self.name}'")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        # How the data is read changes no sample: left out at their defaults, so records and
        # the hashes that find stored teachers read as before they existed.
        out = handler(self)
        defaults = {"stream": "auto", "workers": 2, "memory_budget": None}
        return {k: v for k, v in out.items() if k not in defaults or v != defaults[k]}


class MethodSpec(BaseModel):
    """`{name: kd, weight: 0.9, tau: 4}`: every key besides name and weight is a hyper-parameter."""

    model_config = ConfigDict(extra="allow")
    name: str
    weight: Float = Field(1.0, ge=0)

    @model_validator(mode="after")
    def _check(self):
        cls = _lookup(METHODS, self.name).obj
        refuse_bools(cls.Params, self.model_extra or {}, f"method '{self.name}'")
        try:
            parsed = cls.Params(**(self.model_extra or {}))
        except ValidationError as e:
            err = e.errors()[0]
            key = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                known = ", ".join(cls.Params.model_fields) or "none"
                raise ValueError(f"method '{self.name}' has no hyper-parameter '{key}' (known: {known})") from None
            raise ValueError(f"method '{self.name}' {key}: {err['msg']} (got {err.get('input')!r})") from None
        for k, v in parsed.model_dump().items():
            setattr(self, k, v)
        return self

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def build_params(self):
        return METHODS.get(self.name).obj.Params(**self.params)


class OptimizerSpec(Strict):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: Float = Field(0.05, gt=0)
    momentum: Float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: Float = Field(5e-4, ge=0)
    # Adam's decay rates of the moment estimates: each in [0, 1).
    betas: tuple[Annotated[Float, Field(ge=0, lt=1)], Annotated[Float, Field(ge=0, lt=1)]] = (0.9, 0.999)

    @model_validator(mode="after")
    def _check(self):
        if self.name == "sgd" and self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs a momentum above 0: set train.optimizer.momentum or nesterov: false")
        return self


class ScheduleSpec(Strict):
    name: Literal["constant", "step", "multistep", "cosine"] = "cosine"
    warmup_epochs: Float = Field(0.0, ge=0)
    step_size: Int = Field(30, ge=1)  # for `step`
    milestones: list[Annotated[Int, Field(ge=1)]] = Field(default_factory=list)  # for `multistep`
    gamma: Float = Field(0.1, gt=0, le=1)
    min_lr_ratio: Float = Field(0.0, ge=0, le=1)  # for `cosine`

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError(f"milestones must be increasing epochs (got {v})")
        return v


def omit_defaults(out: dict, defaults: dict) -> dict:
    """A dump without the fields newer than the stores in use while they keep their defaults,
    so the hashes that group runs and find stored teachers read as they did before them."""
    return {k: v for k, v in out.items() if k not in defaults or v != defaults[k]}


class TrainSpec(Strict):
    epochs: Int = Field(10, ge=1)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    grad_clip: Optional[Float] = Field(None, gt=0)
    # Mixed precision (autocast): bf16 on CUDA or the CPU; fp16 (loss-scaled) on CUDA only.
    amp: bool = False
    amp_dtype: Literal["bf16", "fp16"] = "bf16"
    # torch.compile the student + methods module (needs a C++ compiler on the CPU), and NHWC
    # memory format for convolutional models and images: see docs/speed.md for when they pay.
    compile: bool = False
    channels_last: bool = False
    # Write the full (resumable) checkpoint every N epochs and at the last; a resumed run
    # replays the epochs after the last one written, exactly.
    checkpoint_every: Int = Field(1, ge=1)
    # Validate every N epochs and at the last; the best model is chosen among validated epochs.
    eval_every: Int = Field(1, ge=1)

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        return omit_defaults(handler(self), {"checkpoint_every": 1, "eval_every": 1, "compile": False,
                                             "channels_last": False})


def _default_methods() -> list[MethodSpec]:
    return [MethodSpec(name="ce")]


class CacheSpec(Strict):
    """The teacher's outputs on the training data, computed once and reused by every student,
    method, variant and seed (`kdlab.stages.teacher_cache`). `cache: true` takes the defaults."""

    # 0: the data is not augmented and the cache is exact. K >= 1: K augmented views of each
    # training sample, drawn once (seeded by `seed`); each epoch a sample is shown in one of them.
    views: Int = Field(0, ge=0)
    seed: Int = 0
    # float32 reproduces the uncached run bit for bit; float16 halves the size (and rounds).
    dtype: Literal["float32", "float16"] = "float32"
    # Keep only the k largest logits per output (+ the remaining log-mass): for many classes.
    topk: Optional[Int] = Field(None, ge=1)
    # Or k token ids per output drawn from the teacher (seeded by `seed`) and its entropy:
    # an unbiased forward-KL estimate (fkl only; docs/llm.md).
    sampled: Optional[Int] = Field(None, ge=1)
    # Where to keep it (default: <store>/cache/<key>); one made from anything else is refused.
    path: Optional[str] = None

    @model_validator(mode="after")
    def _one_mode(self):
        if self.topk and self.sampled:
            raise ValueError("teacher.cache takes topk or sampled, not both")
        return self

    @property
    def mode(self) -> str:
        return "topk" if self.topk else "sampled" if self.sampled else "full"


class TeacherSpec(Strict):
    model: ModelSpec
    checkpoint: Optional[str] = None  # load instead of training
    # The data the teacher is trained on, when it differs from the student's (default: the same).
    data: Optional[DataSpec] = None
    # How the teacher is trained when no checkpoint is given (default: the experiment's train).
    train: Optional[TrainSpec] = None
    # How the teacher itself is trained; default: the task's supervised loss (ce, or bpr for ranking).
    methods: Optional[list[MethodSpec]] = None
    seed: Optional[Int] = None  # default: the experiment's first seed
    cache: Optional[CacheSpec] = None  # reuse the teacher's outputs across students (see CacheSpec)
    # bf16: the trained or loaded teacher is held in bfloat16 while it teaches (its outputs are
    # upcast to float32 for the losses); the student trains in float32 whatever this says.
    dtype: Literal["float32", "bf16"] = "float32"

    @field_validator("cache", mode="before")
    @classmethod
    def _cache_flag(cls, v):
        return ({} if v else None) if isinstance(v, bool) else v

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        return omit_defaults(handler(self), {"cache": None, "dtype": "float32"})


class PipelineSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str

    @model_validator(mode="after")
    def _check(self):
        entry = _lookup(PIPELINES, self.name)
        params_cls = entry.extra.get("params")
        if params_cls is not None:
            refuse_bools(params_cls, self.model_extra or {}, f"pipeline '{self.name}'")
            try:
                params_cls(**(self.model_extra or {}))
            except ValidationError as e:
                err = e.errors()[0]
                key = ".".join(str(p) for p in err["loc"])
                raise ValueError(f"pipeline '{self.name}' {key}: {err['msg']} (got {err.get('input')!r})") from None
        return self

    def params(self):
        params_cls = PIPELINES.get(self.name).extra.get("params")
        return params_cls(**(self.model_extra or {})) if params_cls else dict(self.model_extra or {})


class Experiment(Strict):
    name: str = "experiment"
    seeds: list[Int] = Field(default_factory=lambda: [0], min_length=1)
    device: str = "auto"
    data: DataSpec
    teacher: Optional[TeacherSpec] = None
    teachers: list[TeacherSpec] = Field(default_factory=list)
    student: ModelSpec
    methods: list[MethodSpec] = Field(default_factory=_default_methods, min_length=1)
    # Named alternatives to `methods`, trained with the same budget and seeds and compared.
    variants: dict[str, list[MethodSpec]] = Field(default_factory=dict)
    train: TrainSpec = Field(default_factory=TrainSpec)
    pipeline: Optional[PipelineSpec] = None
    logging: LoggingSpec = Field(default_factory=LoggingSpec)
    tune: Optional[TuneSpec] = None  # read by `kdlab tune`; `kdlab run` ignores it

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, v: list[int]) -> list[int]:
        repeated = sorted({s for s in v if v.count(s) > 1})
        if repeated:
            raise ValueError(f"seed(s) {', '.join(map(str, repeated))} given twice: each seed must differ (got {v})")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return check_device(v)

    @field_validator("tune")
    @classmethod
    def _tune_paths(cls, v: Optional[TuneSpec], info) -> Optional[TuneSpec]:
        # `tune` is the last field: the others are validated (or failed, and are reported).
        if v is not None and set(cls.model_fields) - {"tune"} <= set(info.data):
            check_paths(cls.model_construct(**info.data).model_dump(mode="json", exclude={"tune"}), v)
        return v

    @model_validator(mode="after")
    def _check(self):
        if self.teacher is not None and self.teachers:
            raise ValueError("give either `teacher` or `teachers`, not both")
        for i, t in enumerate(self.all_teachers()):
            s, n = self.student.num_classes, t.model.num_classes
            if n is not None and s is not None and n != s or (n is None) != (s is None):
                raise ValueError(
                    f"teacher {i} ({t.model.source}) predicts {n or 'the data’s'} classes but the student "
                    f"predicts {s or 'the data’s'}: teacher and student must share the label set"
                )
        if self.student.init_from_teacher is not None and self.teacher is None:
            raise ValueError("student.init_from_teacher copies the layers of one teacher: add a `teacher:` section "
                             "(not `teachers`)")
        if any(t.model.init_from_teacher is not None for t in self.all_teachers()):
            raise ValueError("init_from_teacher is an option of the student's model section, not a teacher's")
        needing = [m.name for ms in self.method_sets().values() for m in ms if needs_teacher(m)]
        if needing and not self.all_teachers():
            raise ValueError(f"method(s) {', '.join(sorted(set(needing)))} need a teacher: add a `teacher:` section")
        self._check_cache_reader()
        return self

    def _check_cache_reader(self) -> None:
        """teacher.cache is refused, not ignored, by a pipeline that does not read it."""
        name = self.pipeline.name if self.pipeline else "distill"
        entry = PIPELINES.get(name)
        if any(t.cache for t in self.all_teachers()) and not entry.extra.get("teacher_cache"):
            readers = ", ".join(n for n in PIPELINES.names() if PIPELINES.get(n).extra.get("teacher_cache"))
            hint = entry.extra.get("cache_hint", f"the pipelines that read it: {readers}")
            raise ValueError(f"pipeline '{name}' does not read teacher.cache (it computes its teachers' outputs "
                             f"itself): remove teacher.cache; {hint}")

    def uses_teacher(self) -> bool:
        """Whether a method reads a teacher or the student is initialised from one."""
        return self.student.init_from_teacher is not None or any(
            needs_teacher(m) for ms in self.method_sets().values() for m in ms)

    def all_teachers(self) -> list[TeacherSpec]:
        return [self.teacher] if self.teacher is not None else list(self.teachers)

    def method_sets(self) -> dict[str, list[MethodSpec]]:
        return dict(self.variants) if self.variants else {"main": self.methods}

    def group_hash(self, methods: list[MethodSpec] | None = None) -> str:
        """Identifies runs of the same config (seeds and device excluded), for mean ± std."""
        d = self.model_dump(mode="json", exclude={"seeds", "device", "variants", "logging", "tune"})
        if methods is not None:
            d["methods"] = [m.model_dump(mode="json") for m in methods]
        return stable_hash(d)


def needs_teacher(m: MethodSpec) -> bool:
    cls = METHODS.get(m.name).obj
    return bool(getattr(cls, "uses_teacher", True))


def stable_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
