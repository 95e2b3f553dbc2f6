import json

import numpy as np
import pytest

from gptcli import data, recipe
from gptcli.console import UserError


def test_split_whole_documents_by_seed():
    docs = [f"story number {i} " * (1 + i % 7) for i in range(400)]
    train, val = data.split(docs, 0.1, seed=1)
    assert all(p.ends_document for p in train + val)
    assert {p.text for p in train} | {p.text for p in val} == set(docs)
    assert not {p.text for p in train} & {p.text for p in val}
    val_chars = sum(len(p.text) for p in val)
    assert 0.1 <= val_chars / sum(map(len, docs)) < 0.12
    assert [p.text for p in data.split(docs, 0.1, seed=1)[1]] == [p.text for p in val]
    assert [p.text for p in data.split(docs, 0.1, seed=2)[1]] != [p.text for p in val]


def test_few_documents_give_the_tail_of_the_text():
    docs = ["a" * 900, "b" * 100]
    train, val = data.split(docs, 0.15, seed=0)
    assert "".join(p.text for p in train) == "a" * 850
    assert train[-1].ends_document is False
    assert "".join(p.text for p in val) == "a" * 50 + "b" * 100


def test_sources_file_dir_glob_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("first doc<|endoftext|>second doc")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "b.jsonl").write_text(json.dumps({"meta": {"body": "third doc"}}) + "\n\n")
    (sub / "skip.bin").write_bytes(b"\x00")
    cfg = recipe.DataConfig(source=str(tmp_path), text_field="meta.body")
    assert data.read_documents(cfg, 0) == ["first doc", "second doc", "third doc"]
    cfg = recipe.DataConfig(source=str(tmp_path / "*.txt"))
    assert data.read_documents(cfg, 0) == ["first doc", "second doc"]


@pytest.mark.parametrize(
    "name, content, needle",
    [
        ("bad.txt", b"ok\xff\xfe", "not UTF-8 at byte offset 2"),
        ("bad.jsonl", b'{"text": "a"}\n{oops\n', "bad.jsonl:2: not valid JSON"),
        ("nofield.jsonl", b'{"body": "a"}\n', "nofield.jsonl:1: no string field 'text'"),
        ("empty.txt", b"  \n<|endoftext|>\n", "the corpus is empty"),
    ],
)
def test_bad_corpus_names_file_and_place(tmp_path, name, content, needle):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(UserError, match=needle.replace("|", r"\|")):
        data.read_documents(recipe.DataConfig(source=str(tmp_path / name)), 0)


def test_missing_source(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        data.read_documents(recipe.DataConfig(source=str(tmp_path / "nope.txt")), 0)


def test_unigram_entropy_of_uniform_tokens():
    ids = np.arange(16).repeat(10)  # 16 equally likely tokens: 4 bits each
    assert data.unigram_bits_per_byte(ids, n_bytes=len(ids) * 2) == pytest.approx(2.0)


def test_batches_depend_only_on_index():
    tokens = np.arange(1000, dtype=np.uint16)
    b = data.Batches(tokens, block_size=8, batch_size=4, seed=3)
    x1, y1 = b.get(5)
    x2, _ = b.get(5)
    x3, _ = b.get(6)
    assert (x1 == x2).all() and not (x1 == x3).all()
    assert (y1[:, :-1] == x1[:, 1:]).all()
    with pytest.raises(UserError, match="fewer than block_size"):
        data.Batches(tokens[:9], block_size=8, batch_size=4, seed=3)
