"""Teacher and student must read the same token ids: both get the batch the data's tokenizer
made. A model folder that brings its own tokenizer, or an input vocabulary of another size,
is refused before anything trains, naming both sides."""

from __future__ import annotations

from typing import Optional

from torch import nn

from kdlab.errors import KdlabError


def embedding_size(model: nn.Module) -> Optional[int]:
    """Rows of a model's input token embedding (Hugging Face models), or None."""
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    return getattr(emb, "num_embeddings", None)


def model_tokenizer(spec) -> Optional[tuple[str, str]]:
    """(fingerprint, folder) of the tokenizer saved in an hf model's folder, if it has one."""
    from kdlab.data.hf_text import folder_fingerprint

    path = spec.hf.path if spec.hf is not None else None
    found = folder_fingerprint(path) if path else None
    return (found, path) if found else None


def check_vocabularies(roles: list[tuple[str, object]], models: list[nn.Module], data) -> None:
    """`roles` are (name, model spec) pairs, `models` the built models, in the same order."""
    tok = data.meta.get("hf_tokenizer")
    seen: list[tuple[str, str, str]] = []  # (fingerprint, where, role)
    if tok:
        seen.append((tok["fingerprint"], f"data.params.tokenizer_path '{tok['path']}'", "the data"))
    for (role, spec), model in zip(roles, models):
        own = model_tokenizer(spec)
        if own:
            seen.append((own[0], f"the tokenizer in '{own[1]}'", role))
    for fp, where, role in seen[1:]:
        if fp != seen[0][0]:
            raise KdlabError(f"{role} uses {where} but {seen[0][2]} {seen[0][1]}: the tokenizers differ, so the "
                             "same token ids would mean different words; tokenise with one tokenizer for both")
    if not tok:
        return
    sizes = [(role, spec, embedding_size(m)) for (role, spec), m in zip(roles, models)]
    sizes = [s for s in sizes if s[2] is not None]
    for role, spec, n in sizes[1:]:
        if n != sizes[0][2]:
            r0, s0, n0 = sizes[0]
            raise KdlabError(f"{role} ({spec.source}) has a vocabulary of {n} tokens but {r0} ({s0.source}) of {n0}: "
                             f"teacher and student must share the vocabulary of the data's tokenizer ({tok['size']} tokens)")
