import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptcli import tokenizer
from gptcli.console import UserError

TEXT = ["Once upon a time there was a cat.", "One day the cat saw a dog. Café, naïve, 🐈!"] * 20


@pytest.fixture(scope="module")
def tok():
    return tokenizer.train(TEXT, 300, ["<|endoftext|>"])


def test_round_trip_any_text(tok):
    for text in ["héllo wörld 🐈", "日本語のテキスト", "tabs\tand\nnewlines  ", ""]:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert tokenizer.decode(tok, ids) == text


def test_special_token_is_one_id(tok):
    ids = tok.encode("a<|endoftext|>b", add_special_tokens=False).ids
    assert tokenizer.eot_id(tok) in ids and len(ids) == 3
    assert tok.get_vocab_size() <= 300


def test_a_prompt_starts_a_new_document(tok):
    """Training documents follow <|endoftext|>: a prompt is read the same way, once."""
    ids = tokenizer.document_ids(tok, "Once upon a time")
    assert ids[0] == tokenizer.eot_id(tok) and tokenizer.eot_id(tok) not in ids[1:]
    assert tokenizer.decode(tok, ids[1:]) == "Once upon a time"
    assert tokenizer.document_ids(tok, "") == [tokenizer.eot_id(tok)]


def test_stream_decoder_never_emits_half_a_character(tok):
    ids = tok.encode("x🐈y", add_special_tokens=False).ids
    assert len(ids) > 3  # the emoji is split over byte tokens
    stream = tokenizer.StreamDecoder(tok)
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == "x🐈y"
    assert all("\ufffd" not in p for p in pieces)


def test_save_and_load_from_run_folder(tok, tmp_path):
    tokenizer.save(tok, tmp_path / "tokenizer.json")
    again = tokenizer.load(tmp_path)
    assert again.encode("cat").ids == tok.encode("cat").ids
    assert not list(tmp_path.glob(".*tmp"))


def test_bad_tokenizer_file(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(UserError, match="not a valid tokenizer.json"):
        tokenizer.load(tmp_path / "tokenizer.json")
    with pytest.raises(UserError, match="tokenizer not found"):
        tokenizer.load(tmp_path / "missing.json")


@given(st.text(max_size=200))
@settings(max_examples=200, deadline=None)
def test_any_unicode_text_round_trips(text):
    tok = _shared_tok()
    ids = tok.encode(text, add_special_tokens=False).ids
    assert tokenizer.decode(tok, ids) == text


@functools.cache
def _shared_tok():
    return tokenizer.train(TEXT, 300, ["<|endoftext|>"])
