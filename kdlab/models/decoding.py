"""Continuing token sequences with a language model, always through its key-value cache: the
prompt is run once, then each new token only (kdlab's `lstm_lm`/`transformer_lm` through
their `step`, a Hugging Face causal LM through `model.generate(use_cache=True)`). Used by
sequence-level distillation (the teacher's outputs) and on-policy distillation (the
student's). Every continuation has exactly `gen_len` tokens: no end-of-sequence stop.

Strategies: `greedy` (argmax), `beam` (`beams` hypotheses; all have the same length, so the
best is the one of highest summed log-probability, no length penalty), `sample` (softmax of
logits / `temperature`, optionally cut to the `top_k` tokens and to the nucleus of mass
`top_p`). Sampling is seeded: the same seed gives the same tokens.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from kdlab.errors import KdlabError
from kdlab.models.lm_base import LanguageModel
from kdlab.seeding import derive, generator


class DecodeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    strategy: Literal["greedy", "beam", "sample"] = "greedy"
    beams: int = Field(4, ge=2, le=64)  # for `beam`
    temperature: float = Field(1.0, gt=0)  # for `sample`
    top_p: float = Field(1.0, gt=0, le=1)  # for `sample`; 1: no nucleus cut
    top_k: int = Field(0, ge=0)  # for `sample`; 0: no cut
    seed: int = 0  # for `sample`

    @model_validator(mode="after")
    def _check(self):
        given = self.model_fields_set
        sampling = {"temperature", "top_p", "top_k", "seed"} & given
        if self.strategy != "sample" and sampling:
            verb = "applies" if len(sampling) == 1 else "apply"
            raise ValueError(f"{', '.join(sorted(sampling))} {verb} to strategy sample only (strategy is {self.strategy})")
        if self.strategy != "beam" and "beams" in given:
            raise ValueError(f"beams applies to strategy beam only (strategy is {self.strategy})")
        return self


def is_hf(model: nn.Module) -> bool:
    return callable(getattr(model, "generate", None)) and hasattr(model, "config")


def can_decode(model: nn.Module) -> bool:
    if isinstance(model, LanguageModel):
        return type(model).step is not LanguageModel.step
    return is_hf(model) and bool(getattr(model, "can_generate", lambda: False)())


def positions_of(model: nn.Module) -> Optional[int]:
    """The most tokens a sequence may hold in the model (None: no limit known)."""
    if isinstance(model, LanguageModel):
        return model.positions()
    config = getattr(model, "config", None)
    for key in ("n_positions", "max_position_embeddings"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    return None


def positions_field(model: nn.Module) -> str:
    """Where the positions are set, for messages."""
    return "hf.config n_positions" if is_hf(model) else "params.max_len"


@torch.no_grad()
def continue_tokens(model: nn.Module, prompt: Tensor, gen_len: int, spec: DecodeSpec, seed: int = 0) -> Tensor:
    """(B, gen_len) tokens continuing `prompt` (B, P), in eval mode (the model's mode is
    restored). `seed` seeds sampling (beside spec.seed)."""
    was = model.training
    model.eval()
    try:
        if is_hf(model):
            return _hf_generate(model, prompt, gen_len, spec, derive(spec.seed, seed))
        if spec.strategy == "beam":
            return _beam(model, prompt, gen_len, spec.beams)
        g = generator(derive(spec.seed, seed), prompt.device) if spec.strategy == "sample" else None
        logits, cache = model.step(prompt)
        out = []
        for i in range(gen_len):
            tok = _pick(logits[:, -1], spec, g)
            out.append(tok)
            if i + 1 < gen_len:
                logits, cache = model.step(tok[:, None], cache)
        return torch.stack(out, dim=1)
    finally:
        model.train(was)


def continue_all(model: nn.Module, prompts: Tensor, gen_len: int, spec: DecodeSpec, batch_size: int) -> Tensor:
    """Continuations of every prompt, `batch_size` prompts at a time (batch i seeded by i)."""
    parts = [continue_tokens(model, prompts[i : i + batch_size], gen_len, spec, seed=i // batch_size)
             for i in range(0, len(prompts), batch_size)]
    return torch.cat(parts) if parts else prompts.new_zeros((0, gen_len))


def _pick(logits: Tensor, spec: DecodeSpec, g: Optional[torch.Generator]) -> Tensor:
    if spec.strategy == "greedy":
        return logits.argmax(-1)
    z = logits.float() / spec.temperature
    if spec.top_k:
        kth = z.topk(min(spec.top_k, z.shape[-1]), dim=-1).values[..., -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if spec.top_p < 1:
        # Keep the fewest most likely tokens whose mass reaches top_p: a token stays when the
        # mass ranked above it is still below top_p (so the most likely one always does).
        p, order = z.softmax(-1).sort(-1, descending=True)
        above = p.cumsum(-1) - p
        drop = torch.zeros_like(z, dtype=torch.bool).scatter(-1, order, above >= spec.top_p)
        z = z.masked_fill(drop, float("-inf"))
    return torch.multinomial(z.softmax(-1), 1, generator=g).squeeze(1)


def _beam(model: LanguageModel, prompt: Tensor, gen_len: int, beams: int) -> Tensor:
    b = len(prompt)
    logits, cache = model.step(prompt)
    logp = logits[:, -1].float().log_softmax(-1)
    vocab = logp.shape[-1]
    k = min(beams, vocab)
    scores, tok = logp.topk(k, dim=-1)  # (B, K)
    seqs = tok[..., None]
    rows = torch.arange(b, device=prompt.device)
    cache = model.reorder_cache(cache, rows.repeat_interleave(k))
    for _ in range(gen_len - 1):
        logits, cache = model.step(seqs[:, :, -1].reshape(b * k, 1), cache)
        logp = logits[:, -1].float().log_softmax(-1).view(b, k, vocab)
        scores, flat = (scores[..., None] + logp).view(b, k * vocab).topk(k, dim=-1)
        beam, tok = flat // vocab, flat % vocab
        seqs = torch.cat([seqs.gather(1, beam[..., None].expand(-1, -1, seqs.shape[2])), tok[..., None]], dim=2)
        cache = model.reorder_cache(cache, (rows[:, None] * k + beam).reshape(-1))
    return seqs[:, 0]  # topk sorts: the best hypothesis first


def _hf_generate(model: nn.Module, prompt: Tensor, gen_len: int, spec: DecodeSpec, seed: int) -> Tensor:
    from transformers import GenerationConfig

    args = dict(max_new_tokens=gen_len, use_cache=True, pad_token_id=0, do_sample=spec.strategy == "sample")
    if spec.strategy == "beam":
        args.update(num_beams=spec.beams, early_stopping=False)
    elif spec.strategy == "sample":
        args.update(temperature=spec.temperature, top_p=spec.top_p, top_k=spec.top_k)
    # The model's own generation config would stop at its eos token and merge its defaults in:
    # replaced for the call, so every continuation has gen_len tokens.
    saved = model.generation_config
    model.generation_config = GenerationConfig(**args)
    devices = [prompt.device] if prompt.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):  # HF samples from the global generator
            torch.manual_seed(seed)
            out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt))
    except Exception as e:
        text = str(e).strip().splitlines()
        raise KdlabError(f"generation with {type(model).__name__} failed: {text[0][:300] if text else type(e).__name__}") from None
    finally:
        model.generation_config = saved
    return out[:, prompt.shape[1] :]
