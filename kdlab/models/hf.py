"""Hugging Face transformers models: from a local folder (never downloaded) or randomly
initialised from a config dict. transformers is an optional dependency (`pip install kdlab[hf]`)
imported only when such a model is asked for."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from kdlab.config.schema import HFSpec
from kdlab.errors import KdlabError, suggest
from kdlab.models.weights import hf_weight_files

HEADS = {
    "causal_lm": "AutoModelForCausalLM",
    "masked_lm": "AutoModelForMaskedLM",
    "sequence_classification": "AutoModelForSequenceClassification",
    "token_classification": "AutoModelForTokenClassification",
    "image_classification": "AutoModelForImageClassification",
}
CLASSIFIER_KINDS = ("sequence_classification", "token_classification", "image_classification")


def transformers():
    """The transformers module, offline: nothing is ever fetched from the hub."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import transformers as tf
    except ImportError:
        raise KdlabError("hf models need the transformers library: pip install 'kdlab[hf]'") from None
    tf.utils.logging.disable_progress_bar()  # kdlab shows its own progress
    return tf


def build_hf(spec: HFSpec, num_classes: Optional[int], task: Optional[str], vocab_size: Optional[int] = None) -> nn.Module:
    """The model of `spec`. `num_classes` is what the data needs (labels for classification,
    the vocabulary for language modelling; None: no check); a config dict that does not set it
    gets it, a folder whose config differs is refused. `vocab_size`: the data's token
    vocabulary (text classification), given to a config dict that does not set one."""
    tf = transformers()
    if spec.path is not None:
        folder = _check_folder(spec.path)
        where = f"hf model '{spec.path}'"
        config = _call(where, lambda: tf.AutoConfig.from_pretrained(str(folder), local_files_only=True))
    else:
        where = f"hf.config (model_type {spec.config['model_type']})"
        fields = {k: v for k, v in spec.config.items() if k != "model_type"}
        key = _size_key(task)
        if key is not None and num_classes is not None and key not in fields and not ("id2label" in fields and key == "num_labels"):
            fields[key] = num_classes
        if vocab_size is not None and "vocab_size" not in fields:
            fields["vocab_size"] = vocab_size
        known = list(tf.CONFIG_MAPPING.keys())
        if spec.config["model_type"] not in known:
            raise KdlabError(f"hf.config: transformers {tf.__version__} has no model_type "
                             f"'{spec.config['model_type']}'.{suggest(spec.config['model_type'], known)}")
        config = _call(where, lambda: tf.AutoConfig.for_model(spec.config["model_type"], **fields))
    head = _head(tf, spec.kind, config, where)
    if spec.kind != "auto" and type(config) not in head._model_mapping:  # e.g. BERT has no image head
        raise KdlabError(f"{where}: transformers has no {spec.kind} head for model_type {config.model_type}; "
                         f"choose another hf.kind ({', '.join(HEADS)}) or auto")
    _check_size(config, spec.kind, num_classes, task, where)
    if spec.path is not None:
        return _call(where, lambda: head.from_pretrained(str(folder), config=config, local_files_only=True,
                                                          dtype=torch.float32))
    return _call(where, lambda: head.from_config(config) if spec.kind != "auto" else head(config))


def _check_folder(path: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise KdlabError(f"hf model folder '{path}' does not exist (models are read from local folders only, "
                         "never downloaded: save one with save_pretrained)")
    if not p.is_dir():
        raise KdlabError(f"hf.path '{path}' is a file; give the model's folder (config.json and .safetensors weights)")
    if not (p / "config.json").is_file():
        raise KdlabError(f"hf model folder '{path}' has no config.json: is it a folder written by save_pretrained?")
    if not hf_weight_files(p):
        raise KdlabError(f"hf model folder '{path}' holds no .safetensors weights (only config.json and "
                         f"{', '.join(sorted(f.name for f in p.iterdir() if f.name != 'config.json')) or 'nothing else'});"
                         " save the model with save_pretrained, or use hf.config for a fresh model")
    return p


def _head(tf, kind: str, config, where: str):
    """The class to build: the Auto class of `kind`, or the config's first architecture."""
    if kind != "auto":
        return getattr(tf, HEADS[kind])
    archs = list(getattr(config, "architectures", None) or [])
    if not archs:
        raise KdlabError(f"{where}: kind auto reads the config's `architectures`, which is empty; set hf.kind "
                         f"to one of {', '.join(HEADS)}")
    cls = getattr(tf, archs[0], None)
    if cls is None:
        raise KdlabError(f"{where}: architecture {archs[0]} is not in transformers {tf.__version__}; set hf.kind")
    return cls


def _size_key(task: Optional[str]) -> Optional[str]:
    return {"classification": "num_labels", "token_classification": "num_labels", "lm": "vocab_size"}.get(task or "")


def _check_size(config, kind: str, num_classes: Optional[int], task: Optional[str], where: str) -> None:
    if num_classes is None:
        return
    archs = list(getattr(config, "architectures", None) or [])
    classifier = kind in CLASSIFIER_KINDS or (kind == "auto" and bool(archs) and "Classification" in archs[0])
    if task in ("classification", "token_classification") and classifier and config.num_labels != num_classes:
        raise KdlabError(f"{where} predicts {config.num_labels} labels (config num_labels) but the data has "
                         f"{num_classes} classes: they must match")
    vocab = getattr(config, "vocab_size", None)
    if task == "lm" and vocab is not None and vocab != num_classes:
        raise KdlabError(f"{where} has a vocabulary of {vocab} tokens (config vocab_size) but the data's has "
                         f"{num_classes}: they must match")


def _call(where: str, build) -> Any:
    """transformers' own errors (unknown model_type, a head the architecture lacks, unreadable
    weights) as one line."""
    try:
        return build()
    except KdlabError:
        raise
    except Exception as e:
        text = str(e).strip().splitlines()
        raise KdlabError(f"{where}: {text[0][:300] if text else type(e).__name__}") from None
