"""DistilBERT-style student initialisation from the teacher's own layers (tiny BERT and GPT-2):
which tensors are copied from where, each architecture that cannot be mapped, and a run whose
student starts from its teacher's layers."""

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from helpers import assert_clear, cli, run_bad, write_config
from kdlab.errors import KdlabError
from kdlab.models.init_from_teacher import init_from_teacher

BERT = dict(hidden_size=16, num_attention_heads=2, intermediate_size=32, vocab_size=30, max_position_embeddings=16,
            num_labels=3)
GPT2 = dict(n_embd=16, n_head=2, n_positions=16, vocab_size=30)


def _bert(layers, **kw):
    return AutoModelForSequenceClassification.from_config(AutoConfig.for_model("bert", **{**BERT, **kw},
                                                                               num_hidden_layers=layers))


def _gpt2(layers, **kw):
    return AutoModelForCausalLM.from_config(AutoConfig.for_model("gpt2", **{**GPT2, **kw}, n_layer=layers))


def _equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_bert_every_other_layer_embeddings_and_head():
    teacher, student = _bert(4), _bert(2)
    message = init_from_teacher(student, teacher, "every_other")
    assert "teacher layers 0, 2 as student layers 0..1" in message and "head copied" in message
    for s, t in ((0, 0), (1, 2)):
        assert _equal(student.bert.encoder.layer[s], teacher.bert.encoder.layer[t])
    assert not _equal(student.bert.encoder.layer[1], teacher.bert.encoder.layer[1])
    assert _equal(student.bert.embeddings, teacher.bert.embeddings)
    assert _equal(student.bert.pooler, teacher.bert.pooler) and _equal(student.classifier, teacher.classifier)


def test_gpt2_chosen_layers_and_tied_head():
    teacher, student = _gpt2(4), _gpt2(2)
    init_from_teacher(student, teacher, [1, 3])
    assert _equal(student.transformer.h[0], teacher.transformer.h[1])
    assert _equal(student.transformer.h[1], teacher.transformer.h[3])
    assert _equal(student.transformer.ln_f, teacher.transformer.ln_f)
    assert torch.equal(student.transformer.wte.weight, teacher.transformer.wte.weight)
    assert student.lm_head.weight is student.transformer.wte.weight  # still tied after the copy


def test_head_of_another_shape_is_left_as_initialised():
    teacher, student = _bert(2, num_labels=5), _bert(1)
    before = student.classifier.weight.clone()
    message = init_from_teacher(student, teacher, [1])
    assert "head left as initialised (classifier.weight differs)" in message
    assert torch.equal(student.classifier.weight, before)
    assert _equal(student.bert.encoder.layer[0], teacher.bert.encoder.layer[1])


@pytest.mark.parametrize("teacher, student, layers, needle", [
    (lambda: _bert(4), lambda: _gpt2(2), "every_other", "the teacher is a bert and the student a gpt2"),
    (lambda: _bert(4), lambda: _bert(3), "every_other", "the student has 3 layers but 2 teacher layers are chosen (0, 2)"),
    (lambda: _bert(4), lambda: _bert(2), [0, 4], "4 is not a teacher layer (the teacher has 4: 0..3)"),
    (lambda: _bert(4), lambda: _bert(2, hidden_size=8), "every_other",
     "student weight bert.embeddings.word_embeddings.weight [30, 8] cannot be taken from the teacher"),
    (lambda: torch.nn.Linear(3, 3), lambda: _bert(2), "every_other", "the teacher is a Linear"),
])
def test_architectures_that_cannot_be_mapped(teacher, student, layers, needle):
    with pytest.raises(KdlabError) as e:
        init_from_teacher(student(), teacher(), layers)
    assert needle in str(e.value)


@pytest.fixture
def tokens(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 30, size=(96, 8))
    np.savez(tmp_path / "tokens.npz", x=x, y=x[:, 0] % 3)
    torch.manual_seed(0)
    _bert(4).save_pretrained(tmp_path / "teacher")
    return tmp_path


def _config(d, student, **top):
    return write_config(d, {
        "name": "init", "seeds": [0], "device": "cpu",
        "data": {"name": "npz", "params": {"path": str(d / "tokens.npz"), "tokens": True}, "batch_size": 32},
        "teacher": {"model": {"hf": {"path": str(d / "teacher")}}, "checkpoint": str(d / "teacher")},
        "student": student, "methods": [{"name": "ce"}],
        "train": {"epochs": 1, "optimizer": {"name": "sgd", "lr": 1e-12, "momentum": 0.0, "weight_decay": 0.0}},
        **top})


def test_run_starts_the_student_from_its_teachers_layers(tokens, store, capsys):
    """Trained with a vanishing learning rate, the stored student still holds the teacher's
    layers 0 and 2 (a CE-only run: the teacher is loaded for the initialisation alone)."""
    from helpers import checkpoint
    from kdlab.store.runstore import RunStore

    student = {"hf": {"config": {"model_type": "bert", **BERT, "num_hidden_layers": 2},
                      "kind": "sequence_classification"}, "init_from_teacher": {"layers": "every_other"}}
    assert cli("run", _config(tokens, student), "--store", store) == 0
    out = " ".join(capsys.readouterr().err.split())  # progress and notes go to stderr, wrapped
    assert "student initialised from the teacher: embeddings, teacher layers 0, 2 as student layers 0..1" in out
    run = RunStore(store).rows()[0]
    state = checkpoint(run["path"], "best")["model"]
    teacher = AutoModelForSequenceClassification.from_pretrained(tokens / "teacher").state_dict()
    for s, t in ((0, 0), (1, 2)):
        key = "bert.encoder.layer.{}.attention.self.query.weight"
        assert torch.allclose(state[key.format(s)], teacher[key.format(t)], atol=1e-8)
    assert torch.allclose(state["bert.embeddings.word_embeddings.weight"],
                          teacher["bert.embeddings.word_embeddings.weight"], atol=1e-8)


@pytest.mark.parametrize("student, top, needle", [
    ({"name": "mlp", "init_from_teacher": {}}, {}, "it needs an hf source"),
    ({"hf": {"path": "teacher"}, "init_from_teacher": {"layers": []}}, {}, "distinct teacher layer indices"),
    ({"hf": {"path": "teacher"}, "init_from_teacher": {"layers": "all"}}, {}, "student.init_from_teacher.layers"),
    ({"hf": {"path": "teacher"}, "init_from_teacher": {}}, {"teacher": None}, "add a `teacher:` section"),
])
def test_bad_init_from_teacher_configs(tokens, capsys, student, top, needle):
    cfg = _config(tokens, student, **top)
    if top.get("teacher", 1) is None:
        import yaml
        raw = yaml.safe_load(open(cfg))
        del raw["teacher"]
        open(cfg, "w").write(yaml.safe_dump(raw))
    assert_clear(*run_bad(capsys, "validate", cfg), needle)
