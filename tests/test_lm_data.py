"""Word tokenizer and text corpora for language modelling."""

import pytest
import torch

from kdlab.data.text_corpus import chunk_stream, pydoc_dataset, text_dataset
from kdlab.data.tokenizer import EOS, UNK, WordTokenizer, split_words
from kdlab.errors import KdlabError

TEXT = "The cat sat on the mat.\n\nThe dog sat, too!\nA cat; a dog.\n"


def test_split_words_by_hand():
    assert split_words("Hello, World!\n\nx_1 = 2\n") == [
        "hello", ",", "world", "!", EOS, "x_1", "=", "2", EOS,
    ]
    assert split_words("Hi <eos>", lowercase=False) == ["Hi", "<", "eos", ">", EOS]


def test_fit_orders_by_frequency_then_string_and_caps():
    words = split_words(TEXT)
    tok = WordTokenizer.fit(words)
    # counts: the 3, <eos> 3 (special), cat 2, sat 2, dog 2, a 2, '.' 2, then singletons
    assert tok.itos[:2] == [UNK, EOS]
    assert tok.itos[2:8] == ["the", ".", "a", "cat", "dog", "sat"]
    assert len(tok) == 2 + len(set(words) - {EOS})
    capped = WordTokenizer.fit(words, max_vocab=5)
    assert capped.itos == [UNK, EOS, "the", ".", "a"]
    rare = WordTokenizer.fit(words, min_freq=2)
    assert "mat" not in rare.stoi and "cat" in rare.stoi


def test_round_trip_and_unknown_words():
    tok = WordTokenizer.fit(split_words(TEXT))
    ids = tok.encode(TEXT)
    assert split_words(tok.decode(ids)) == split_words(TEXT)
    assert tok.decode(tok.encode("the cat.")) == "the cat ."
    assert tok.encode("the zebra") == [tok.stoi["the"], tok.unk_id, tok.stoi[EOS]]


def test_fitting_is_deterministic():
    words = split_words(TEXT * 3)
    a, b = WordTokenizer.fit(words), WordTokenizer.fit(list(reversed(words)))
    assert a.itos == b.itos
    assert a.encode(TEXT) == b.encode(TEXT)


def test_chunk_stream_shifts_targets():
    ids = torch.arange(11)
    s = chunk_stream(ids, 4)
    assert s["x"].tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert s["y"].tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]


def test_text_dataset_contiguous_split(tmp_path):
    words = [f"w{i % 37}" for i in range(2000)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(" ".join(words[i : i + 10]) for i in range(0, 2000, 10)))
    b = text_dataset(str(path), seq_len=8, val_fraction=0.1, test_fraction=0.2)
    assert b.task == "lm" and b.input_shape == (8,)
    assert b.model_args == {"vocab_size": b.num_classes} and b.num_classes == 2 + 37
    n = 2200  # 2000 words + 200 <eos>
    assert b.meta["tokens"] == n
    for split, size in [(b.train, n - 220 - 440), (b.val, 220), (b.test, 440)]:
        assert split["x"].shape == ((size - 1) // 8, 8) and split["x"].dtype == torch.long
        assert torch.equal(split["x"][:, 1:], split["y"][:, :-1])
        # consecutive windows continue the stream
        assert torch.equal(split["y"][:-1, -1], split["x"][1:, 0])
    tok = b.meta["tokenizer"]
    all_ids = torch.tensor(tok.encode(path.read_text()))
    assert torch.equal(b.test["x"][0], all_ids[n - 440 : n - 440 + 8])
    assert torch.equal(b.val["x"][0], all_ids[n - 660 : n - 660 + 8])


def test_tokenizer_is_fitted_on_train_only(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(("alpha beta gamma\n" * 200) + "omega\n" * 30)
    b = text_dataset(str(path), seq_len=4, val_fraction=0.05, test_fraction=0.05)
    assert "omega" not in b.meta["tokenizer"].stoi  # only in the held-out tail
    assert b.meta["heldout_unk_rate"] > 0


def test_pydoc_builtin_corpus_with_cap():
    b = pydoc_dataset(seq_len=16, max_tokens=3000, max_vocab=200)
    assert b.meta["tokens"] == 3000 and b.num_classes == 200
    assert len(b.train) == (2400 - 1) // 16 and b.train["x"].max() < 200


def test_bad_input_is_a_kdlab_error(tmp_path):
    with pytest.raises(KdlabError, match="does not exist"):
        text_dataset(str(tmp_path / "missing.txt"))
    short = tmp_path / "short.txt"
    short.write_text("just a few words here\n")
    with pytest.raises(KdlabError, match="too few"):
        text_dataset(str(short), seq_len=35)
    with pytest.raises(KdlabError, match="max_vocab"):
        longer = tmp_path / "longer.txt"
        longer.write_text("one two three four five\n" * 20)
        text_dataset(str(longer), seq_len=4, max_vocab=2)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\xfa" * 100)
    with pytest.raises(KdlabError, match="encoding"):
        text_dataset(str(bad))


def test_ngram_overlap_by_hand():
    from kdlab.data.lm_topic_split import ngram_overlap
    train = "a b c d e".split()
    # held-out 3-grams: (a b c) seen, (b c x) not, (c x d) not, (x d e) not
    assert ngram_overlap(train, "a b c x d e".split(), n=3) == pytest.approx(1 / 4)
    assert ngram_overlap(train, "a b".split(), n=3) == 0.0


def test_topic_split_holds_out_whole_documents_and_drops_repeats():
    from kdlab.data.lm_topic_split import topic_split
    rep = "the same long sentence is repeated in two documents here and there"
    docs = {f"d{i}": f"unique words of document number {i} alone\n\n{rep}\n\nmore text {i} only" for i in range(10)}
    train, val, test, rec = topic_split(docs, seed=0, val_fraction=0.2, test_fraction=0.2)
    held = rec["val_docs"] + rec["test_docs"]
    assert held and not set(held) & {d for d in docs if f"number {d[1:]}" in " ".join(train)}
    # the shared paragraph stays in training text but is dropped from every held-out document
    assert "repeated" in train and "repeated" not in val + test
    assert rec["dropped_paragraphs"] == len(held)
    assert topic_split(docs, 0, 0.2, 0.2) == (train, val, test, rec)  # seeded, deterministic
    assert topic_split(docs, 1, 0.2, 0.2)[3] != rec


def test_pydoc_topic_split_has_no_verbatim_overlap():
    """The contiguous cut repeats 36% of its test 20-grams from training; the topic split none
    (split seed 0), and no held-out topic's text is in training."""
    old = pydoc_dataset(split="contiguous")
    assert old.meta["heldout_20gram_overlap"]["test"] == pytest.approx(0.36206, abs=1e-5)
    assert old.meta["heldout_20gram_overlap"]["val"] == pytest.approx(0.07067, abs=1e-5)
    new = pydoc_dataset()
    assert new.meta["split"] == "topic"
    assert new.meta["heldout_20gram_overlap"] == {"val": 0.0, "test": 0.0}
    assert not set(new.meta["test_docs"]) & set(new.meta["val_docs"])
    assert (len(new.train), len(new.val), len(new.test)) == (1512, 493, 353)


def test_pydoc_bad_split_is_a_kdlab_error():
    with pytest.raises(KdlabError, match="split must be"):
        pydoc_dataset(split="random")
