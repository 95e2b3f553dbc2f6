"""Corpora through the real `gptcli tokenize`: sources, URLs, stdin, staleness, bad input, ids."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, SHARED_DATA, assert_one_line_error, gptcli

SHAKESPEARE = SHARED_DATA / "tinyshakespeare.txt"
SMALL = "name: c\ntokenizer:\n  vocab_size: 300\n"


def _recipe(folder: Path, source: str, extra: str = "") -> Path:
    path = folder / "c.yaml"
    path.write_text(SMALL + f"data:\n  source: {json.dumps(source)}\n{extra}")
    return path


def _tokenize(folder: Path, *args: str, env_cache: Path | None = None, input=None):
    if env_cache is not None:
        os.environ["GPTCLI_CACHE"] = str(env_cache)
    try:
        return gptcli("tokenize", *args, "--json", "--quiet", cwd=folder, input=input)
    finally:
        os.environ.pop("GPTCLI_CACHE", None)


def _shard_id(folder: Path) -> tuple:
    st = (folder / "runs/c/data/train.bin").stat()
    return st.st_ino, st.st_mtime_ns


def _no_partial_files(folder: Path) -> None:
    leftovers = [p for p in folder.rglob("*") if p.name.endswith((".tmp", ".part"))]
    assert not leftovers, leftovers
    assert not list(folder.rglob("*.bin"))


# --------------------------------------------------------------------------- local HTTP server


class _Handler(http.server.BaseHTTPRequestHandler):
    body = b"one story<|endoftext|>" * 50 + b"two"
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 - the http.server API
        self.requests.append(self.path)
        first = self.requests.count(self.path) == 1
        if self.path.startswith("/corpus.txt") or (self.path == "/once.txt" and first):
            self._send(self.body)
        elif self.path == "/once.txt":  # the network is gone: hang up without an answer
            self.close_connection = True
        elif self.path == "/nolength.txt":  # no Content-Length: the size shows while reading
            self.send_response(200)
            self.end_headers()
            self.wfile.write(self.body)
        elif self.path == "/page.html":
            self._send(b"<p>one story</p><|endoftext|>" * 120, "text/html; charset=utf-8")
        elif self.path == "/sneaky.txt":  # an HTML page that says it is text
            self._send(b"\n<!DOCTYPE html><html>" + self.body)
        elif self.path == "/cut.txt":  # promises more than it sends, then hangs up
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.body) * 2))
            self.end_headers()
            self.wfile.write(self.body)
            self.wfile.flush()
            self.connection.shutdown(2)
        else:
            self.send_error(404)

    def _send(self, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


def test_url_source_downloads_once_verified_then_offline(tmp_path, server):
    cache = tmp_path / "cache"
    sha = hashlib.sha256(_Handler.body).hexdigest()
    recipe = _recipe(tmp_path, f"{server}/corpus.txt", f"  sha256: '{sha}'\n")
    proc = _tokenize(tmp_path, str(recipe), env_cache=cache)
    assert proc.returncode == 0, proc.stderr
    cached = [p for p in cache.iterdir() if p.suffix != ".json"]
    assert len(cached) == 1 and cached[0].read_bytes() == _Handler.body
    m = json.loads(proc.stdout)
    assert m["train"]["documents"] + m["val"]["documents"] == 51
    # offline: the cached copy is used even when the server no longer answers for it
    recipe2 = _recipe(tmp_path, f"{server}/corpus.txt", "  val_fraction: 0.2\n")
    again = _tokenize(tmp_path, str(recipe2), env_cache=cache)
    assert again.returncode == 0, again.stderr
    assert _Handler.requests.count("/corpus.txt") == 1


@pytest.mark.parametrize(
    "path, extra, needle",
    [
        ("/missing.txt", "", "HTTP 404"),
        ("/cut.txt", "", "download"),
        ("/corpus.txt", "  sha256: '" + "0" * 64 + "'\n", "not data.sha256"),
        ("/corpus.txt?big", "  max_download_mb: 0.001\n", "larger than data.max_download_mb"),
        ("/nolength.txt", "  max_download_mb: 0.001\n", "larger than data.max_download_mb"),
        ("/page.html", "", "HTML page"),
        ("/sneaky.txt", "", "HTML page"),
    ],
)
def test_failed_or_refused_downloads_leave_nothing_behind(tmp_path, server, path, extra, needle):
    cache = tmp_path / "cache"
    proc = _tokenize(tmp_path, str(_recipe(tmp_path, server + path, extra)), env_cache=cache)
    assert_one_line_error(proc, needle)
    assert not cache.exists() or not list(cache.iterdir())
    _no_partial_files(tmp_path)


def _cached(cache: Path) -> Path:
    (path,) = [p for p in cache.iterdir() if p.suffix != ".json"]
    return path


def test_a_download_is_recorded_and_checked_before_reuse(tmp_path, server):
    """Its sha256 is printed (to pin), recorded beside it with size and URL, and a cached copy
    that no longer matches the record is downloaded again."""
    cache, url = tmp_path / "cache", f"{server}/corpus.txt?copy=2"
    recipe = _recipe(tmp_path, url)
    first = gptcli("tokenize", str(recipe), cwd=tmp_path, env={"GPTCLI_CACHE": str(cache)})
    assert first.returncode == 0, first.stderr
    sha = hashlib.sha256(_Handler.body).hexdigest()
    assert f"sha256 {sha}" in first.stderr and "data.sha256" in first.stderr
    record = json.loads(_cached(cache).with_name(_cached(cache).name + ".json").read_text())
    assert record == {"url": url, "bytes": len(_Handler.body), "sha256": sha}
    _cached(cache).write_bytes(_Handler.body[:-1] + b"?")  # same size, other bytes
    again = _tokenize(tmp_path, str(recipe), env_cache=cache)
    assert again.returncode == 0, again.stderr
    assert _cached(cache).read_bytes() == _Handler.body
    assert _Handler.requests.count("/corpus.txt?copy=2") == 2


def test_a_cached_file_without_a_record_is_downloaded_again(tmp_path, server):
    cache, url = tmp_path / "cache", f"{server}/corpus.txt?copy=3"
    assert _tokenize(tmp_path, str(_recipe(tmp_path, url)), env_cache=cache).returncode == 0
    for record in cache.glob("*.json"):
        record.unlink()
    _cached(cache).write_bytes(b"planted<|endoftext|>" * 10)
    proc = _tokenize(tmp_path, str(_recipe(tmp_path, url)), env_cache=cache)
    assert proc.returncode == 0, proc.stderr
    assert _cached(cache).read_bytes() == _Handler.body


def test_offline_with_a_cached_file_that_fails_its_check(tmp_path, server):
    cache, url = tmp_path / "cache", f"{server}/once.txt"
    assert _tokenize(tmp_path, str(_recipe(tmp_path, url)), env_cache=cache).returncode == 0
    with open(_cached(cache), "ab") as f:
        f.write(b"more")
    proc = _tokenize(tmp_path, str(_recipe(tmp_path, url)), env_cache=cache)
    assert_one_line_error(proc, str(_cached(cache)), "does not match", "downloading it again")


def test_html_allowed_when_asked(tmp_path, server):
    """The page reaches the shards as it was served, tags and all."""
    from tokenizers import Tokenizer

    extra = "  allow_html: true\n  val_fraction: 0.01\n"
    proc = _tokenize(
        tmp_path, str(_recipe(tmp_path, f"{server}/page.html", extra)), env_cache=tmp_path / "c"
    )
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "runs/c"
    ids = np.fromfile(run / "data" / "train.bin", dtype=json.loads(proc.stdout)["dtype"])
    text = Tokenizer.from_file(str(run / "tokenizer.json")).decode(ids.tolist())
    assert text.count("<p>one story</p>") == json.loads(proc.stdout)["train"]["documents"] > 100


def test_unreachable_url(tmp_path):
    proc = _tokenize(
        tmp_path, str(_recipe(tmp_path, "http://127.0.0.1:9/x.txt")), env_cache=tmp_path
    )
    assert_one_line_error(proc, "download failed")


# --------------------------------------------------------------------------- files and stdin


def test_stdin_is_spooled_and_fingerprinted(tmp_path):
    text = "".join(f"story {i} about a cat<|endoftext|>" for i in range(120))
    recipe = _recipe(tmp_path, "-")
    proc = _tokenize(tmp_path, str(recipe), input=text)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    assert manifest["train"]["documents"] + manifest["val"]["documents"] == 120
    assert (tmp_path / "runs/c/data/stdin.txt").read_text() == text
    before = _shard_id(tmp_path)
    assert _tokenize(tmp_path, str(recipe), input=text).returncode == 0
    assert _shard_id(tmp_path) == before
    changed = _tokenize(tmp_path, str(recipe), input=text + "one more")
    assert _shard_id(tmp_path) != before
    m = json.loads(changed.stdout)
    assert m["train"]["documents"] + m["val"]["documents"] == 121


def test_changed_source_rebuilds_touched_one_does_not(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("".join(f"tale {i}<|endoftext|>" for i in range(150)))
    recipe = _recipe(tmp_path, str(corpus))
    first = _tokenize(tmp_path, str(recipe))
    assert first.returncode == 0, first.stderr
    before = _shard_id(tmp_path)
    skip = gptcli("tokenize", str(recipe), cwd=tmp_path)
    assert "up to date" in skip.stderr and _shard_id(tmp_path) == before
    os.utime(corpus / "a.txt", (1, 1))  # mtime changed, bytes not: re-hashed, still current
    assert _tokenize(tmp_path, str(recipe)).returncode == 0 and _shard_id(tmp_path) == before
    (corpus / "b.md").write_text("a new file")
    rebuilt = _tokenize(tmp_path, str(recipe))
    assert _shard_id(tmp_path) != before
    m = json.loads(rebuilt.stdout)
    assert [len(s["files"]) for s in m["corpus"]["sources"]] == [2]
    assert all(
        f["bytes"] > 0 and len(f["sha256"]) == 64 for f in m["corpus"]["sources"][0]["files"]
    )


@pytest.mark.parametrize(
    "name, content, extra, needle",
    [
        ("bad.txt", b"fine<|endoftext|>\xff", "", "bad.txt: not UTF-8 at byte offset 17"),
        ("bad.jsonl", b'{"text": "a"}\n[\n', "", "bad.jsonl:2: not valid JSON"),
        ("nf.jsonl", b'{"t": "a"}\n', "", "nf.jsonl:1: no string field 'text'"),
        ("sur.jsonl", b'{"text": "a \\udcff"}\n', "", "sur.jsonl:1: not UTF-8 at byte offset 2"),
        ("empty.txt", b"\n\n", "", "the corpus is empty"),
        ("missing.txt", None, "", "no such file"),
    ],
)
def test_bad_corpus_exits_2_without_partial_shards(tmp_path, name, content, extra, needle):
    if content is not None:
        (tmp_path / name).write_bytes(content * (1 if name != "bad.txt" else 1))
    proc = _tokenize(tmp_path, str(_recipe(tmp_path, str(tmp_path / name), extra)))
    assert_one_line_error(proc, needle)
    _no_partial_files(tmp_path)


def test_bad_bytes_in_a_big_file_fail_after_shards_started(tmp_path):
    """The error comes mid-encode (after the tokenizer pass): temp shards are removed."""
    good = "".join(f"story {i} of many<|endoftext|>" for i in range(3000))
    (tmp_path / "a.txt").write_bytes(good.encode() + b"\xff")
    proc = _tokenize(tmp_path, str(_recipe(tmp_path, str(tmp_path / "a.txt"))))
    assert_one_line_error(proc, "not UTF-8 at byte offset")
    _no_partial_files(tmp_path)
    ok = _tokenize(tmp_path, str(_recipe(tmp_path, str(tmp_path / "a.txt"), "  errors: replace\n")))
    assert ok.returncode == 0, ok.stderr


def test_weighted_list_of_sources(tmp_path):
    (tmp_path / "a.txt").write_text("".join(f"apple {i}<|endoftext|>" for i in range(100)))
    (tmp_path / "b.jsonl").write_text(
        "".join(json.dumps({"x": {"y": f"pear {i}"}}) + "\n" for i in range(50))
    )
    recipe = tmp_path / "c.yaml"
    recipe.write_text(
        SMALL
        + f"data:\n  text_field: x.y\n  source:\n    - {tmp_path / 'a.txt'}\n"
        + f"    - {{path: {tmp_path / 'b.jsonl'}, weight: 3}}\n"
    )
    proc = _tokenize(tmp_path, str(recipe))
    assert proc.returncode == 0, proc.stderr
    m = json.loads(proc.stdout)
    assert m["train"]["documents"] + m["val"]["documents"] == 100 + 3 * 50


# --------------------------------------------------------------------------- ids


def _shared_files() -> list[Path]:
    return sorted(p for p in SHARED_DATA.rglob("*") if p.is_file())


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data")
def test_shards_equal_tokenizers_ids_on_every_shared_corpus(tmp_path):
    """One run over every shared file as plain text (JSON, markdown, non-ASCII, the
    <|endoftext|> separators): the shards hold exactly `tokenizers`' ids per document."""
    from tokenizers import Tokenizer

    corpus = tmp_path / "all"
    corpus.mkdir()
    for i, f in enumerate(_shared_files()):
        shutil.copy(f, corpus / f"{i:02d}-{f.name}.txt")  # .txt: read as text, not JSONL
    recipe = _recipe(tmp_path, str(corpus), "  val_fraction: 0.01\n")
    # the BPE trains on a 2 MB sample (tokenizer.train_bytes); every byte is encoded
    tok_keys = "vocab_size: 1024\n  train_bytes: 2000000"
    recipe.write_text(recipe.read_text().replace("vocab_size: 300", tok_keys))
    proc = _tokenize(tmp_path, str(recipe))
    assert proc.returncode == 0, proc.stderr
    m = json.loads(proc.stdout)
    assert m["encoder"] == "tiktoken"
    run = tmp_path / "runs/c"
    tok = Tokenizer.from_file(str(run / "tokenizer.json"))
    eot = tok.token_to_id("<|endoftext|>")
    from gptcli import recipe as recipe_mod
    from gptcli.data import split

    cfg = recipe_mod.load(recipe).data
    expected = {"train": [], "val": []}
    splitter_docs = split.routed(cfg, 1337, run, None)
    texts = {"train": [], "val": []}
    for split_name, text, _ in splitter_docs:
        texts[split_name].append(text)
    for split_name, docs in texts.items():
        for enc in tok.encode_batch(docs, add_special_tokens=False):
            expected[split_name].extend([*enc.ids, eot])
        got = np.fromfile(run / "data" / f"{split_name}.bin", dtype=m["dtype"])
        assert got.tolist() == expected[split_name], split_name
    assert any(ord(c) > 127 for d in texts["train"] for c in d)


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="needs ../shared/data")
def test_fast_encoder_with_special_tokens_and_fallback():
    from tokenizers import Tokenizer, pre_tokenizers

    from gptcli import tokenizer

    texts = [f.read_text(encoding="utf-8")[:20_000] for f in _shared_files()]
    tok = tokenizer.train(texts, 1024, ["<|endoftext|>", "<|pad|>"])
    enc = tokenizer.Encoder(tok)
    assert enc.name == "tiktoken"
    for text in [*texts, "x<|pad|>y<|endoftext|>z", "日本語 🐈 naïve\r\n\t  end  "]:
        want = tok.encode(text, add_special_tokens=False).ids + [enc.eot]
        assert enc.encode([text], [True]).tolist() == want
    other = Tokenizer.from_str(tok.to_str())
    other.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    assert tokenizer.Encoder(other).name == "tokenizers"
    assert tokenizer.Encoder(other).encode(["a b"], [True]).tolist() == [
        *other.encode("a b", add_special_tokens=False).ids,
        enc.eot,
    ]


# --------------------------------------------------------------------------- recipes


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="needs ../shared/data")
@pytest.mark.parametrize(
    "name, local",
    [
        ("shakespeare", SHAKESPEARE),
        ("tinystories", SHARED_DATA / "tinystories/TinyStories-valid.head.txt"),
    ],
)
def test_shipped_recipes_run_offline_on_a_local_copy(tmp_path, name, local):
    proc = gptcli(
        "tokenize",
        str(REPO / "recipes" / f"{name}.yaml"),
        "--set",
        f"data.source={local}",
        "--set",
        "tokenizer.vocab_size=512",
        "--json",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    m = json.loads(proc.stdout)
    total = m["train"]["tokens"] + m["val"]["tokens"]
    assert abs(m["val"]["tokens"] / total - 0.05) < 0.01 or name == "shakespeare"
    if name == "shakespeare":  # one document: the tail of the text
        assert m["train"]["documents"] == 0 and m["val"]["documents"] == 1


def test_old_manifest_of_a_builtin_corpus_is_upgraded_not_rebuilt(trained, tmp_path):
    """Manifests before version 3 fingerprinted builtin: by the generator's source bytes: such
    a run resumes with a warning (no rebuild), and its manifest is upgraded."""
    shutil.copytree(trained / "runs", tmp_path / "runs")
    shutil.copy(trained / "mini.yaml", tmp_path / "mini.yaml")
    path = tmp_path / "runs" / "mini" / "data" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["format_version"] = 2
    manifest["corpus"]["sources"][0]["generator"] = "0123456789abcdef"
    path.write_text(json.dumps(manifest))
    shard = tmp_path / "runs" / "mini" / "data" / "train.bin"
    mtime = shard.stat().st_mtime_ns
    proc = gptcli("pretrain", "mini.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "older gptcli" in proc.stderr and "already at step 12" in proc.stderr
    assert shard.stat().st_mtime_ns == mtime
    upgraded = json.loads(path.read_text())
    from gptcli.data.manifest import MANIFEST_VERSION

    assert upgraded["format_version"] == MANIFEST_VERSION
    assert upgraded["corpus"]["sources"][0]["generator"] == 1
    assert "older gptcli" not in gptcli("pretrain", "mini.yaml", cwd=tmp_path).stderr
