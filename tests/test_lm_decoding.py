"""Decoding with the key-value cache (kdlab/models/decoding.py): the cached step gives the
full forward's logits, greedy and beam search equal references written with full forwards
(no cache), sampling is seeded and its cuts behave, a Hugging Face model's generate gives
exactly gen_len greedy tokens even past its eos token, and bad settings are refused."""

import pytest
import torch
from pydantic import ValidationError
from transformers import AutoConfig, AutoModelForCausalLM

from kdlab.models.decoding import DecodeSpec, can_decode, continue_tokens, positions_of
from kdlab.models.lstm_lm import lstm_lm
from kdlab.models.mlp import mlp
from kdlab.models.transformer_lm import transformer_lm

V = 23


def models():
    torch.manual_seed(0)
    tr = transformer_lm(V, (8,), vocab_size=V, d_model=16, nhead=2, layers=2, ff=32, dropout=0.1, max_len=24)
    ls = lstm_lm(V, (8,), vocab_size=V, emb_dim=8, hidden=12, layers=2, dropout=0.1, tie_weights=False)
    for m in (tr, ls):  # untrained logits are nearly flat: sharpen them so argmax ties cannot occur
        with torch.no_grad():
            m.fc.weight.mul_(30)
    return {"transformer_lm": tr, "lstm_lm": ls}


def full_logits(model, x):
    out = model(x)
    return getattr(out, "logits", out)


def greedy_reference(model, prompt, n):
    seq = prompt
    with torch.no_grad():
        for _ in range(n):
            seq = torch.cat([seq, full_logits(model, seq)[:, -1].argmax(-1, keepdim=True)], 1)
    return seq[:, prompt.shape[1]:]


def beam_reference(model, prompt, n, k):
    """Beam search per sequence over full forwards: hypotheses (tokens, summed log-prob)."""
    out = []
    with torch.no_grad():
        for row in prompt:
            beams = [([], 0.0)]
            for _ in range(n):
                cand = []
                for toks, score in beams:
                    x = torch.cat([row, torch.tensor(toks, dtype=torch.long)])[None]
                    logp = full_logits(model, x)[0, -1].float().log_softmax(-1)
                    cand += [(toks + [v], score + float(logp[v])) for v in range(V)]
                beams = sorted(cand, key=lambda c: -c[1])[:k]
            out.append(beams[0][0])
    return torch.tensor(out)


@pytest.mark.parametrize("name", ["transformer_lm", "lstm_lm"])
def test_cached_steps_give_the_full_forward_logits(name):
    model = models()[name].eval()
    x = torch.randint(0, V, (3, 10))
    with torch.no_grad():
        logits, cache = model.step(x[:, :4])
        parts = [logits]
        for i in range(4, 10):
            logits, cache = model.step(x[:, i : i + 1], cache)
            parts.append(logits)
        torch.testing.assert_close(torch.cat(parts, 1), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["transformer_lm", "lstm_lm"])
def test_greedy_and_beam_equal_references_without_cache(name):
    model = models()[name]
    model.train()
    prompt = torch.randint(0, V, (3, 5))
    greedy = continue_tokens(model, prompt, 7, DecodeSpec())
    assert model.training  # the mode is restored after decoding in eval mode
    model.eval()
    assert torch.equal(greedy, greedy_reference(model, prompt, 7))
    beam = continue_tokens(model, prompt, 4, DecodeSpec(strategy="beam", beams=3))
    assert torch.equal(beam, beam_reference(model, prompt, 4, 3))


def test_sampling_is_seeded_and_its_cuts_work():
    model = models()["transformer_lm"].eval()
    for m in model.modules():  # flatten the distribution so samples differ from argmax
        if m is model.fc:
            with torch.no_grad():
                m.weight.div_(30)
    prompt = torch.randint(0, V, (16, 4))
    spec = DecodeSpec(strategy="sample", seed=5)
    a, b = continue_tokens(model, prompt, 8, spec), continue_tokens(model, prompt, 8, spec)
    assert torch.equal(a, b)
    assert not torch.equal(a, continue_tokens(model, prompt, 8, DecodeSpec(strategy="sample", seed=6)))
    assert not torch.equal(a, continue_tokens(model, prompt, 8, DecodeSpec()))
    greedy = continue_tokens(model, prompt, 8, DecodeSpec())
    # top_k 1 and a nucleus smaller than the top token's mass both leave only the argmax
    assert torch.equal(continue_tokens(model, prompt, 8, DecodeSpec(strategy="sample", top_k=1)), greedy)
    assert torch.equal(continue_tokens(model, prompt, 8, DecodeSpec(strategy="sample", top_p=1e-6)), greedy)


def test_hf_generate_gives_gen_len_greedy_tokens_past_eos():
    torch.manual_seed(0)
    config = AutoConfig.for_model("gpt2", n_embd=16, n_layer=1, n_head=2, n_positions=32, vocab_size=V)
    model = AutoModelForCausalLM.from_config(config).eval()
    prompt = torch.randint(0, V, (4, 5))
    ref = greedy_reference(model, prompt, 9)
    model.generation_config.eos_token_id = int(ref[0, 0])  # generate would stop here by itself
    out = continue_tokens(model, prompt, 9, DecodeSpec())
    assert torch.equal(out, ref)
    assert model.generation_config.eos_token_id == int(ref[0, 0])  # the model's own config is restored
    spec = DecodeSpec(strategy="sample", seed=1)
    assert torch.equal(continue_tokens(model, prompt, 9, spec), continue_tokens(model, prompt, 9, spec))
    assert positions_of(model) == 32 and can_decode(model)


def test_what_can_decode_and_its_positions():
    ms = models()
    assert positions_of(ms["transformer_lm"]) == 24 and positions_of(ms["lstm_lm"]) is None
    assert can_decode(ms["lstm_lm"]) and not can_decode(mlp(3, (4,)))


@pytest.mark.parametrize("bad, needle", [
    ({"strategy": "greedy", "temperature": 0.5}, "temperature applies to strategy sample only"),
    ({"strategy": "sample", "beams": 3}, "beams applies to strategy beam only"),
    ({"strategy": "beam", "beams": 1}, "greater than or equal to 2"),
    ({"strategy": "sample", "top_p": 1.5}, "less than or equal to 1"),
    ({"strategy": "sample", "temperature": 0}, "greater than 0"),
    ({"strategy": "nucleus"}, "'greedy', 'beam' or 'sample'"),
])
def test_invalid_generation_settings(bad, needle):
    with pytest.raises(ValidationError, match=needle):
        DecodeSpec(**bad)
