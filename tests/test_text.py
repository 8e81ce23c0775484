"""Tests for experiments/data/text.py: sentence-pair encoding with a tiny WordPiece tokenizer."""

import numpy as np
import pytest

from experiments.data.text import encode_pairs, load_tokenizer
from tests.bert_helpers import SPECIAL, WORDS, tiny_tokenizer

PAD, CLS, SEP = (SPECIAL.index(t) for t in ("[PAD]", "[CLS]", "[SEP]"))


def _id(word):
    return len(SPECIAL) + WORDS.index(word)


def test_encode_pairs_segments_and_padding():
    x = encode_pairs(tiny_tokenizer(), ["The movie"], ["was good"], max_len=10)
    assert set(x) == {"input_ids", "token_type_ids", "attention_mask"}
    assert all(v.dtype == np.int32 and v.shape == (1, 10) for v in x.values())
    the, movie, was, good = (_id(w) for w in ("the", "movie", "was", "good"))
    np.testing.assert_array_equal(
        x["input_ids"][0], [CLS, the, movie, SEP, was, good, SEP, PAD, PAD, PAD]
    )
    np.testing.assert_array_equal(x["token_type_ids"][0], [0, 0, 0, 0, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(x["attention_mask"][0], [1, 1, 1, 1, 1, 1, 1, 0, 0, 0])


def test_encode_single_sentences():
    x = encode_pairs(tiny_tokenizer(), ["good", "a man eats food"], max_len=5)
    good, a, man, eats = (_id(w) for w in ("good", "a", "man", "eats"))
    np.testing.assert_array_equal(
        x["input_ids"], [[CLS, good, SEP, PAD, PAD], [CLS, a, man, eats, SEP]]
    )  # "food" truncated away
    assert not x["token_type_ids"].any()
    np.testing.assert_array_equal(x["attention_mask"], [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])


def test_encode_pairs_truncates_longest_first():
    tok = tiny_tokenizer()
    long_a = "the movie was good the movie was good"  # 8 tokens
    x = encode_pairs(
        tok,
        [long_a, "a man eats", "a man eats food"],
        ["bad", "the movie was", "good bad the movie"],
        max_len=9,
    )
    ids, types = x["input_ids"], x["token_type_ids"]
    assert (x["attention_mask"] == 1).all()  # every row filled up to max_len
    # 6 text tokens fit: 8 + 1 -> 5 + 1 (only the longer one is cut).
    np.testing.assert_array_equal(ids[0], [CLS, *ids[0][1:6], SEP, _id("bad"), SEP])
    # 3 + 3 fit as they are; 4 + 4 -> 3 + 3.
    for row in (1, 2):
        np.testing.assert_array_equal(types[row], [0] * 5 + [1] * 4)
    np.testing.assert_array_equal(ids[2][1:4], [_id(w) for w in ("a", "man", "eats")])
    np.testing.assert_array_equal(ids[2][5:8], [_id(w) for w in ("good", "bad", "the")])


def test_encode_pairs_overrides_the_files_own_truncation_and_padding():
    tok = tiny_tokenizer()
    tok.enable_truncation(128)
    tok.enable_padding(length=128)
    assert encode_pairs(tok, ["good"], max_len=16)["input_ids"].shape == (1, 16)
    assert encode_pairs(tok, ["good"], max_len=4)["input_ids"].shape == (1, 4)


def test_encode_pairs_accepts_bytes_and_numpy_strings():
    tok = tiny_tokenizer()
    ref = encode_pairs(tok, ["the movie"], ["was bad"], max_len=8)
    for a, b in [([b"the movie"], [b"was bad"]), (np.array(["the movie"]), np.array(["was bad"]))]:
        x = encode_pairs(tok, a, b, max_len=8)
        for k in ref:
            np.testing.assert_array_equal(x[k], ref[k])
    assert encode_pairs(tok, [], max_len=8)["input_ids"].shape == (0, 8)


def test_encode_pairs_errors():
    with pytest.raises(ValueError, match="2 texts_a but 1 texts_b"):
        encode_pairs(tiny_tokenizer(), ["a", "b"], ["c"], max_len=8)


def test_load_tokenizer_from_directory_or_file(tmp_path):
    tiny_tokenizer().save(str(tmp_path / "tokenizer.json"))
    for path in (tmp_path, tmp_path / "tokenizer.json"):
        x = encode_pairs(load_tokenizer(path), ["good"], max_len=4)
        np.testing.assert_array_equal(x["input_ids"], [[CLS, _id("good"), SEP, PAD]])
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json"):
        load_tokenizer(tmp_path / "nowhere")
