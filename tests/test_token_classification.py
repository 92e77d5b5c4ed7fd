"""Per-token classification (NER-style): word tags aligned to sub-tokens (first sub-token gets
the tag, the rest -100), the token_classification task's loss and accuracy against loops, CE, KD
and the token divergences ignoring unlabelled positions, and a Hugging Face BERT teacher (from a
save_pretrained folder) distilled into a smaller BERT end to end; a tags column that does not
exist is refused."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import assert_clear, assert_pinned, cli, history, run_bad, write_config
from kdlab.config.schema import DataSpec
from kdlab.data.stream import materialize
from kdlab.methods.base import MethodContext, Outputs
from kdlab.methods.lm_distill import ForwardKL
from kdlab.methods.logit_kd import KD
from kdlab.methods.supervised import CE
from kdlab.stages.building import load_data
from kdlab.store.runstore import RunStore
from kdlab.tasks.base import get_task

# Word-level vocabulary plus pieces: "london" and "paris" split into two sub-tokens each.
WHOLE = ["anna", "bob", "carl", "dora", "visited", "left", "saw", "met", "in", "at", "and", "the", "city", "today"]
PIECES = ["lon", "##don", "par", "##is", "ber", "##lin"]
PEOPLE, PLACES = ["anna", "bob", "carl", "dora"], ["london", "paris", "berlin"]


def _wordpiece(folder: Path) -> str:
    """A BERT-style WordPiece tokenizer ([CLS] ... [SEP]) built from a fixed vocabulary, no download."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WHOLE, *PIECES])}
    tk = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]").save_pretrained(folder)
    return str(folder)


def _sentences(n=80, seed=0):
    """Rows {tokens, tags}: a person (B-PER) does something in/at a city (B-LOC, which may be a
    person's name: the tag depends on the context); other words O."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        who, place = rng.choice(PEOPLE), rng.choice(PLACES + PEOPLE)  # a city may bear a person's name
        words = [who, rng.choice(["visited", "left", "saw", "met"]), rng.choice(["the", "in", "at"]), "city", place]
        tags = ["B-PER", "O", "O", "O", "B-LOC"]
        if rng.random() < 0.5:
            words, tags = words + ["and", rng.choice(PEOPLE)], tags + ["O", "B-PER"]
        if rng.random() < 0.3:
            words, tags = words + ["today"], tags + ["O"]
        rows.append({"tokens": words, "tags": tags})
    return rows


BERT = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 16}
SMALL = {**BERT, "hidden_size": 16, "num_hidden_layers": 1, "intermediate_size": 32}
MAX_LEN = 12


@pytest.fixture(scope="module")
def ner(tmp_path_factory):
    from transformers import AutoConfig, AutoModelForTokenClassification

    d = tmp_path_factory.mktemp("ner")
    (d / "ner.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _sentences()))
    tok = _wordpiece(d / "tok")
    torch.manual_seed(0)
    vocab = 4 + len(WHOLE) + len(PIECES)
    AutoModelForTokenClassification.from_config(AutoConfig.for_model(**{**BERT, "vocab_size": vocab, "num_labels": 3})
                                                ).save_pretrained(d / "teacher")
    return d, tok, vocab


def _data(d, tok, **params):
    return {"name": "hf_dataset", "batch_size": 16, "params": {
        "path": str(d / "ner.jsonl"), "task": "token_classification", "columns": {"x": "tokens", "y": "tags"},
        "tokenizer_path": tok, "max_length": MAX_LEN, "cache": str(d / "cache"), **params}}


# ------------------------------------------------------------------ data
def test_word_tags_go_to_the_first_sub_token_and_the_rest_is_ignored(ner):
    from transformers import AutoTokenizer

    d, tok, vocab = ner
    data = load_data(DataSpec(**_data(d, tok)))
    assert data.task == "token_classification" and data.num_classes == 3
    assert data.class_names == ["B-LOC", "B-PER", "O"] and data.model_args == {"vocab_size": vocab}
    t = AutoTokenizer.from_pretrained(tok)
    rows = {tuple(r["tokens"]): r["tags"] for r in _sentences()}
    split = data.train
    assert split["x"].shape == split["y"].shape == split["attention_mask"].shape == (len(split), MAX_LEN)
    for x, y, m in zip(split["x"], split["y"], split["attention_mask"]):
        pieces = t.convert_ids_to_tokens(x[m.bool()].tolist())
        assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]"
        words = t.decode(x[m.bool()], skip_special_tokens=True).replace(" ##", "").split()
        want = [data.class_names.index(g) for g in rows[tuple(words)]]
        # independent alignment: a tag where a piece starts a word (no ##), -100 on [CLS], [SEP],
        # continuation pieces and padding
        starts = [i for i, p in enumerate(pieces) if p not in ("[CLS]", "[SEP]") and not p.startswith("##")]
        expect = torch.full((MAX_LEN,), -100)
        expect[starts] = torch.tensor(want)
        assert torch.equal(y, expect)
    assert any(p.startswith("##") for p in t.convert_ids_to_tokens(split["x"].flatten().tolist()))
    # streamed: the same rows, read on demand
    streamed = load_data(DataSpec(**{**_data(d, tok), "stream": True, "workers": 0}))
    assert all(torch.equal(materialize(streamed.test)[k], data.test[k]) for k in data.test.tensors)


# ------------------------------------------------------------------ task and losses
def _fixed(seed=0, b=3, t=5, c=4):
    g = torch.Generator().manual_seed(seed)
    s, te = torch.randn(b, t, c, generator=g) * 2, torch.randn(b, t, c, generator=g) * 2
    y = torch.randint(0, c, (b, t), generator=g)
    y[0, 0] = y[1, 3] = y[2, 4] = -100
    mask = torch.ones(b, t, dtype=torch.long)
    mask[2, 3:] = 0
    y[2, 3:] = -100  # padding is unlabelled, as encode_words makes it
    return s, te, y, mask


def test_task_loss_and_token_accuracy_match_a_loop():
    s, _, y, mask = _fixed()
    task = get_task(type("D", (), {"task": "token_classification"})())
    sums = task.eval_batch(lambda x: s, {"x": torch.zeros(3, 5), "y": y, "attention_mask": mask})
    got = task.finalize({k: float(v) for k, v in sums.items()})
    nll, hits, n = 0.0, 0, 0
    for b in range(3):
        for i in range(5):
            if y[b, i] == -100 or mask[b, i] == 0:
                continue
            logp = s[b, i] - torch.logsumexp(s[b, i], 0)
            nll -= float(logp[y[b, i]])
            hits += int(int(s[b, i].argmax()) == int(y[b, i]))
            n += 1
    assert n == 11 and task.primary_metric == "acc"
    assert got["loss"] == pytest.approx(nll / n, rel=1e-5) and got["acc"] == pytest.approx(100 * hits / n)


def test_ignored_positions_do_not_change_ce_kd_fkl_or_the_metrics():
    s, te, y, mask = _fixed()
    ctx = MethodContext(num_classes=4, student=None, teachers=[], train_size=3, epochs=1, device=torch.device("cpu"))
    batch = {"y": y, "attention_mask": mask}
    ignored = (y == -100)[..., None]
    s2, te2 = torch.where(ignored, s * 7 + 3, s), torch.where(ignored, -te, te)
    methods = {"ce": CE(CE.Params(), ctx), "kd": KD(KD.Params(tau=2.0), ctx), "fkl": ForwardKL(ForwardKL.Params(), ctx)}
    for name, m in methods.items():
        a = m(batch, Outputs(logits=s), [Outputs(logits=te)])[name]
        b = m(batch, Outputs(logits=s2), [Outputs(logits=te2)])[name]
        assert float(a) == pytest.approx(float(b), rel=1e-6), name
    # KD: tau^2 * KL(p_t || p_s) averaged over the 11 labelled, unpadded positions only
    keep = ~ignored[..., 0]
    p, logq = torch.softmax(te[keep] / 2, -1), torch.log_softmax(s[keep] / 2, -1)
    kd = 4 * (p * (p.log() - logq)).sum(-1).mean()
    assert float(methods["kd"](batch, Outputs(logits=s), [Outputs(logits=te)])["kd"]) == pytest.approx(float(kd), rel=1e-5)
    task = get_task(type("D", (), {"task": "token_classification"})())
    sums = [task.eval_batch(lambda x, z=z: z, {"x": y, **batch}) for z in (s, s2)]
    assert all(torch.equal(sums[0][k], sums[1][k]) for k in sums[0])


# ------------------------------------------------------------------ end to end
def _word_accuracy(model, data) -> float:
    """Token accuracy of a model loaded with from_pretrained, counted independently: one
    prediction per word (its first sub-token) against the word's tag."""
    hits = n = 0
    test = data.test
    with torch.no_grad():
        logits = model(input_ids=test["x"], attention_mask=test["attention_mask"]).logits
    for row, y in zip(logits.argmax(-1), test["y"]):
        for i in range(MAX_LEN):
            if int(y[i]) != -100:
                hits, n = hits + int(row[i] == y[i]), n + 1
    return 100.0 * hits / n


def test_bert_teacher_distils_into_a_smaller_bert_on_word_tags(ner, tmp_path, capsys):
    from transformers import AutoModelForTokenClassification

    d, tok, vocab = ner
    cfg = {"name": "ner", "seeds": [0], "device": "cpu", "data": _data(d, tok),
           "teacher": {"model": {"hf": {"path": str(d / "teacher"), "kind": "token_classification"}},
                       "train": {"epochs": 3, "optimizer": {"name": "adam", "lr": 0.01, "weight_decay": 0.0}}},
           "student": {"hf": {"config": SMALL, "kind": "token_classification"}},
           "methods": [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5, "tau": 2}],
           "train": {"epochs": 2, "optimizer": {"name": "adam", "lr": 0.003, "weight_decay": 0.0}}}
    store = str(tmp_path / "store")
    assert cli("run", write_config(tmp_path, cfg), "--store", store, "--quiet") == 0
    runs = {r["kind"]: r for r in RunStore(store).rows()}
    teacher, student = runs["teacher"]["summary"], runs["student"]["summary"]
    hist = [json.loads(l) for l in Path(runs["student"]["path"], "metrics.jsonl").read_text().splitlines()]
    assert hist[-1]["train_kd"] > 0 and len(hist) == 2
    assert_pinned({"teacher_acc": teacher["test_acc"], "student_acc": student["test_acc"], "student_loss": student["test_loss"],
                   "train_kd": hist[-1]["train_kd"]},
                  {"teacher_acc": 100.0, "student_acc": 84.0, "student_loss": 0.8959681701660156, "train_kd": 0.3199390172958374})
    # teacher.cache: the stored teacher's logits (B, T, C) read from the cache, the same student run
    cached = {**cfg, "teacher": {**cfg["teacher"], "cache": True}}
    assert cli("run", write_config(tmp_path, cached, name="cached.yaml"), "--store", store, "--quiet") == 0
    (again,) = [r for r in RunStore(store).rows() if r["kind"] == "student" and r["id"] != runs["student"]["id"]]
    assert history(again["path"], timeless=True) == history(runs["student"]["path"], timeless=True)
    assert len(list(Path(store, "cache").iterdir())) == 1  # built once, from the stored teacher
    # the saved Hugging Face folder scores what the run measured, counted word by word
    data = load_data(DataSpec(**_data(d, tok)))
    model = AutoModelForTokenClassification.from_pretrained(Path(runs["student"]["path"]) / "hf", local_files_only=True)
    assert model.config.num_labels == 3 and model.config.hidden_size == 16
    assert _word_accuracy(model.eval(), data) == pytest.approx(student["test_acc"], abs=1e-6)
    # kdlab list layers and export --format hf work on the token classifier
    capsys.readouterr()
    assert cli("list", "layers", "--hf", str(Path(runs["student"]["path"]) / "hf")) == 0
    layers = capsys.readouterr().out
    assert "bert.encoder.layer.0.attention" in layers and "classifier  Linear" in layers
    out = tmp_path / "exported"
    assert cli("export", runs["student"]["id"], "--store", store, "--format", "hf", "--out", out, "--repeats", "2") == 0
    assert "what distillation bought" in capsys.readouterr().out
    exported = AutoModelForTokenClassification.from_pretrained(out, local_files_only=True).eval()
    assert _word_accuracy(exported, data) == pytest.approx(student["test_acc"], abs=1e-6)


def test_bad_token_classification_data_is_refused(ner, tmp_path, capsys):
    d, tok, _ = ner
    cfg = {"name": "bad", "seeds": [0], "device": "cpu", "methods": [{"name": "ce"}],
           "data": _data(d, tok, columns={"x": "tokens", "y": "labels"}),
           "student": {"hf": {"config": SMALL, "kind": "token_classification"}},
           "train": {"epochs": 1, "optimizer": {"name": "adam", "lr": 0.01, "weight_decay": 0.0}}}
    assert_clear(*run_bad(capsys, "run", write_config(tmp_path, cfg)),
                 "data.params.columns.y", "no column 'labels'", "tokens, tags")
    # words without a tokenizer to split them into sub-tokens
    no_tok = {**cfg, "data": _data(d, tok)}
    no_tok["data"]["params"].pop("tokenizer_path")
    assert_clear(*run_bad(capsys, "run", write_config(tmp_path, no_tok, name="n.yaml")),
                 "token_classification", "data.params.tokenizer_path")
    # a row whose tags do not match its words one to one
    rows = _sentences(20)
    rows[3]["tags"] = rows[3]["tags"][:-1]
    (tmp_path / "short.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    short = {**cfg, "data": _data(d, tok, path=str(tmp_path / "short.jsonl"))}
    assert_clear(*run_bad(capsys, "run", write_config(tmp_path, short, name="s.yaml")),
                 "words but", "one tag per word")
