import gzip
import json

import numpy as np
import pytest
import torch

from gptcli import recipe
from gptcli.console import UserError
from gptcli.data import batches, corpus, manifest, shards, split, streams


def _docs(cfg, seed=0):
    return [doc for _, doc in corpus.iter_documents(cfg, seed)]


def _route(docs, fraction, seed, tail=None):
    splitter = split.Splitter(fraction, seed, tail)
    return [r for d in docs for r in splitter.route(d)]


def test_split_whole_documents_by_seed_within_one_percent():
    docs = [f"story number {i} " * (1 + i % 7) for i in range(400)]
    routes = _route(docs, 0.1, seed=1)
    assert all(end for _, _, end in routes)
    val = [t for s, t, _ in routes if s == "val"]
    assert sorted(t for _, t, _ in routes) == sorted(docs)
    assert abs(sum(map(len, val)) / sum(map(len, docs)) - 0.1) < 0.01
    assert [t for s, t, _ in _route(docs, 0.1, seed=1) if s == "val"] == val
    assert [t for s, t, _ in _route(docs, 0.1, seed=2) if s == "val"] != val


def test_weights_repeat_documents_in_the_same_split():
    docs = [f"doc {i}" for i in range(200)]
    splitter = split.Splitter(0.2, 3)
    routes = [list(splitter.route(d, 2.0)) for d in docs]
    assert all(len(r) == 2 and r[0] == r[1] for r in routes)
    half = split.Splitter(0.2, 3)
    kept = sum(len(list(half.route(d, 0.5))) for d in docs)
    assert 70 < kept < 130


def test_few_documents_give_the_tail_of_the_text(tmp_path):
    (tmp_path / "a.txt").write_text("a" * 900 + "<|endoftext|>" + "b" * 100)
    cfg = recipe.DataConfig(source=str(tmp_path / "a.txt"), val_fraction=0.15)
    tail = split.tail_split_chars(cfg, 0)
    assert tail == 850
    routes = list(split.routed(cfg, 0, None, tail))
    assert routes == [
        ("train", "a" * 850, False),
        ("val", "a" * 50, True),
        ("val", "b" * 100, True),
    ]


def test_sources_file_dir_glob_jsonl_gz_list(tmp_path):
    (tmp_path / "a.txt").write_text("first doc<|endoftext|>second doc")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "b.jsonl").write_text(json.dumps({"meta": {"body": "third doc"}}) + "\n\n")
    with gzip.open(sub / "c.md.gz", "wt") as f:
        f.write("fourth<|endoftext|>fifth")
    (sub / "skip.bin").write_bytes(b"\x00")
    cfg = recipe.DataConfig(source=str(tmp_path), text_field="meta.body")
    assert _docs(cfg) == ["first doc", "second doc", "third doc", "fourth", "fifth"]
    cfg = recipe.DataConfig(source=str(tmp_path / "*.txt"))
    assert _docs(cfg) == ["first doc", "second doc"]
    cfg = recipe.DataConfig(source=[str(tmp_path / "a.txt"), {"path": "builtin:stories"}])
    cfg.builtin_mb = 0.002
    docs = _docs(cfg, seed=5)
    assert docs[:2] == ["first doc", "second doc"] and len(docs) > 2


def test_builtin_stream_matches_generate():
    from gptcli import stories

    cfg = recipe.DataConfig(source="builtin:stories", builtin_mb=0.05)
    expected = [d.strip() for d in stories.generate(50_000, 7).split("<|endoftext|>") if d.strip()]
    assert _docs(cfg, seed=7) == expected


def test_builtin_story_chat_is_task_records_and_stories_is_text():
    """builtin:story-chat gives a task its conversations (seeded, data.builtin_mb of them);
    each builtin corpus exits 2 where the other kind of data is needed."""
    from gptcli import story_chat

    cfg = recipe.DataConfig(source="builtin:story-chat", builtin_mb=0.02)
    src = cfg.sources()[0]
    got = corpus.records(src, cfg, None, 7)
    assert [r for _, r in got] == list(story_chat.records(0.02, 7))
    assert got[0][0] == "builtin:story-chat #1" and got[0][1]["messages"][0]["role"] == "user"
    assert corpus.records(src, cfg, None, 8) != got
    entry = corpus.fingerprint(cfg, 7)["sources"][0]
    assert entry["chat"] == story_chat.VERSION and entry["mb"] == 0.02
    with pytest.raises(UserError, match="holds conversations for the sft task"):
        _docs(cfg)
    text = recipe.DataConfig(source="builtin:stories", builtin_mb=0.02)
    with pytest.raises(UserError, match="is text, not task examples.*builtin:story-chat"):
        corpus.records(text.sources()[0], text, None, 7)
    with pytest.raises(UserError, match="available: builtin:stories, builtin:story-chat"):
        _docs(recipe.DataConfig(source="builtin:poems"))


def test_documents_straddling_read_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(streams, "READ_CHUNK", 7)
    docs = [f"document {i} with some words" for i in range(30)]
    (tmp_path / "c.txt").write_text("<|endoftext|>".join(docs))
    assert _docs(recipe.DataConfig(source=str(tmp_path / "c.txt"))) == docs


def test_safe_pieces_keep_the_ids(tmp_path):
    from gptcli import tokenizer

    text = "Hello there.\n  indented\nNext line, 'tis\n\nnew para\n" * 50
    pieces = shards.safe_pieces(text, size=100)
    assert len(pieces) > 5 and "".join(pieces) == text
    tok = tokenizer.train([text], 300, ["<|endoftext|>"])
    whole = tok.encode(text, add_special_tokens=False).ids
    assert [i for p in pieces for i in tok.encode(p, add_special_tokens=False).ids] == whole


@pytest.mark.parametrize(
    "name, content, needle",
    [
        ("bad.txt", b"ok<|endoftext|>ok\xff\xfe", "bad.txt: not UTF-8 at byte offset 17"),
        ("bad.jsonl", b'{"text": "a"}\n{oops\n', "bad.jsonl:2: not valid JSON"),
        ("bad2.jsonl", b'{"text": "a"}\n{"text": "\xff"}\n', "bad2.jsonl:2: not UTF-8 at byte"),
        ("nofield.jsonl", b'{"body": "a"}\n', "nofield.jsonl:1: no string field 'text'"),
        ("empty.txt", b"  \n<|endoftext|>\n", "the corpus is empty"),
        ("open.csv", b'id,text\n1,fine\n\n2,"never closed\n3,x\n', "open.csv:4: a quoted field"),
        ("openhead.csv", b'id,"text\n1,x\n', "openhead.csv:1: a quoted field"),
    ],
)
def test_bad_corpus_names_file_and_place(tmp_path, name, content, needle):
    (tmp_path / name).write_bytes(content)
    cfg = recipe.DataConfig(source=str(tmp_path / name))
    with pytest.raises(UserError, match=needle.replace("|", r"\|")):
        list(split.routed(cfg, 0, None, None))


def test_csv_quoted_fields_may_span_lines_and_end_the_file(tmp_path):
    """Only a quote still open at the end of the file is an error (see open.csv above)."""
    (tmp_path / "ok.csv").write_text('id,text\n1,"two\nlines"\n\n2,"ends ""here"""')
    docs = _docs(recipe.DataConfig(source=str(tmp_path / "ok.csv")))
    assert docs == ["two\nlines", 'ends "here"']


def test_errors_replace_substitutes(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"ok\xffgo")
    cfg = recipe.DataConfig(source=str(tmp_path / "bad.txt"), errors="replace")
    assert _docs(cfg) == ["ok\ufffdgo"]


def test_missing_source(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        _docs(recipe.DataConfig(source=str(tmp_path / "nope.txt")))


def test_fingerprint_reuses_hash_only_for_same_size_and_mtime(tmp_path, monkeypatch):
    f = tmp_path / "a.txt"
    f.write_text("hello")
    cfg = recipe.DataConfig(source=str(f))
    fp = corpus.fingerprint(cfg, 0)
    calls = []
    monkeypatch.setattr(corpus, "sha256_file", lambda p: calls.append(p) or "x")
    assert corpus.same_corpus(corpus.fingerprint(cfg, 0, known=fp), fp) and not calls
    f.write_text("hellp")
    assert not corpus.same_corpus(corpus.fingerprint(cfg, 0, known=fp), fp) and calls


def test_unigram_entropy_of_uniform_tokens():
    ids = np.arange(16).repeat(10)  # 16 equally likely tokens: 4 bits each
    bits = shards.unigram_bits_from_counts(np.bincount(ids), n_bytes=len(ids) * 2)
    assert bits == pytest.approx(2.0)


def test_batches_depend_only_on_index():
    tokens = np.arange(1000, dtype=np.uint16)
    b = batches.Batches(tokens, block_size=8, batch_size=4, seed=3)
    x1, y1 = b.get(5)
    x2, _ = b.get(5)
    x3, _ = b.get(6)
    assert (x1 == x2).all() and not (x1 == x3).all()
    assert (y1[:, :-1] == x1[:, 1:]).all()
    with pytest.raises(UserError, match="fewer than block_size"):
        batches.Batches(tokens[:9], block_size=8, batch_size=4, seed=3)
    fresh = batches.Batches(tokens, block_size=8, batch_size=4, seed=3)
    assert (fresh.get(5)[0] == x1).all()  # no hidden state: a resumed run sees the same batch


def test_each_epoch_trains_on_every_window_once_at_a_new_offset():
    tokens = np.arange(1000, dtype=np.uint16)
    b = batches.Batches(tokens, block_size=8, batch_size=4, seed=0)
    per_epoch = b.batches_per_epoch
    assert per_epoch == (1000 - 1 - 8) // 8 // 4

    def epoch_starts(epoch: int) -> list[int]:
        firsts = [b.get(epoch * per_epoch + k)[0][:, 0] for k in range(per_epoch)]
        return sorted(torch.cat(firsts).tolist())

    first, second = epoch_starts(0), epoch_starts(1)
    assert len(set(first)) == per_epoch * 4  # no window twice within an epoch
    assert {s % 8 for s in first} == {first[0] % 8}  # one grid of non-overlapping windows
    assert max(first) + 9 <= 1000 and first[0] % 8 != second[0] % 8  # the grid moves


def test_a_tiny_split_still_fills_the_batch():
    b = batches.Batches(np.arange(30, dtype=np.uint16), block_size=8, batch_size=4, seed=0)
    x, y = b.get(0)
    assert x.shape == y.shape == (4, 8)


def test_bpe_trained_on_safe_pieces_equals_bpe_on_the_whole_document():
    """Huge documents are handed to the BPE trainer in pieces (bounded memory): same merges."""
    from conftest import SHARED_DATA

    from gptcli import tokenizer

    text = (SHARED_DATA / "tinyshakespeare.txt").read_text()[:300_000]
    pieces = shards.safe_pieces(text, 5_000)
    assert len(pieces) > 50 and "".join(pieces) == text
    whole = tokenizer.train([text], 600, ["<|endoftext|>"])
    cut = tokenizer.train(pieces, 600, ["<|endoftext|>"])
    assert whole.to_str() == cut.to_str()


def test_builtin_fingerprint_ignores_the_generator_source(tmp_path, monkeypatch):
    """A reformat of stories.py changes no generated byte, so it must not make runs stale."""
    from gptcli import stories

    cfg = recipe.DataConfig(source="builtin:stories")
    before = corpus.fingerprint(cfg, 0)
    copy = tmp_path / "stories.py"
    copy.write_text(open(stories.__file__).read() + "\n# reformatted\n")
    monkeypatch.setattr(stories, "__file__", str(copy))
    assert corpus.fingerprint(cfg, 0) == before


# --------------------------------------------------------------------------- data/manifest.json

MANIFEST = {
    "format_version": 5,
    "corpus": {"sources": []},
    "tokenizer_settings": {"vocab_size": 400},
    "tokenizer_sha256": "ab" * 32,
    "vocab_size": 400,
    "dtype": "uint16",
    "encoder": "tokenizers",
    "train": {"documents": 3, "bytes": 90, "tokens": 30},
    "val": {"documents": 1, "bytes": 30, "tokens": 10},
    "bytes_per_token": 3,
    "val_unigram_bpb": 4.5,
    "elapsed_s": 0.5,
    "sources": [],
    "max_tokens": 0,
    "stopped_early": False,
    "curation": {"removed": {}, "examples": "data/removed.json"},  # only with curation (6)
}
BAD_MANIFEST = {
    "format_version": 7,
    "corpus": [],
    "tokenizer_settings": "bpe",
    "tokenizer_sha256": None,
    "vocab_size": 0,
    "dtype": "int8",
    "encoder": 1,
    "train": {"tokens": "30"},
    "val": {"documents": -1, "tokens": 1},
    "bytes_per_token": "3",
    "val_unigram_bpb": None,
    "elapsed_s": [],
    "sources": {},
    "max_tokens": 0.5,
    "stopped_early": "no",
    "curation": [],
}


def test_a_manifest_reads_typed(tmp_path):
    assert set(BAD_MANIFEST) == set(MANIFEST) == manifest.MANIFEST_KEYS
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(MANIFEST))
    assert manifest.read_manifest_file(path) == {**MANIFEST, "bytes_per_token": 3.0}


@pytest.mark.parametrize("key", sorted(BAD_MANIFEST))
def test_a_bad_manifest_value_is_refused_naming_file_and_key(tmp_path, key):
    path = tmp_path / "data" / "manifest.json"
    path.parent.mkdir()
    path.write_text(json.dumps({**MANIFEST, key: BAD_MANIFEST[key]}))
    with pytest.raises(UserError, match=key.replace("format_version", "format_version 7")) as e:
        manifest.read_manifest(tmp_path)
    assert str(path) in str(e.value)
    if key in ("dtype", "vocab_size", "train", "val"):
        path.write_text(json.dumps({k: v for k, v in MANIFEST.items() if k != key}))
        with pytest.raises(UserError, match=f"missing key '{key}'"):
            manifest.read_manifest(tmp_path)
