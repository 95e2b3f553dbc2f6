"""Corpus sources, the train/val split, token shards on disk and training batches.

A corpus is a stream of documents from one or more sources, read a chunk at a time so it
never has to fit in memory. Shards are flat arrays of token ids with <|endoftext|> after every
document, appended as batches are encoded and memory-mapped at training time.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import math
import os
import random
import re
import shutil
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gptcli import console, stories, tokenizer
from gptcli.console import UserError
from gptcli.files import cache_dir, get_field, sha256_file, write_atomic
from gptcli.recipe import EOT, DataConfig, Recipe, TokenizerConfig

MANIFEST_VERSION = 3  # 3: builtin corpora fingerprinted by stories.VERSION
TEXT_SUFFIXES = (".txt", ".md", ".jsonl")
MIN_DOCS_FOR_DOC_SPLIT = 100
STDIN_FILE = "stdin.txt"
READ_CHUNK = 1 << 20  # bytes read at a time
BATCH_CHARS = 1 << 18  # characters per encoding batch (one task for a worker thread; small
# enough that the last ones finish close together on all cores)
# Longer documents go to the BPE trainer and the encoders in pieces cut at safe places (same
# word counts, same ids): both need ~100 bytes per pre-token of a string handed over at once
# (a 5 MB document took 0.5 GB), so pieces keep memory bounded.
MAX_PIECE_CHARS = 100_000
MANIFEST_KEYS = {
    "format_version",
    "corpus",
    "tokenizer_settings",
    "tokenizer_sha256",
    "vocab_size",
    "dtype",
    "encoder",
    "train",
    "val",
    "bytes_per_token",
    "val_unigram_bpb",
    "elapsed_s",
}
_SEP = EOT.encode()


# --------------------------------------------------------------------------- sources


@dataclass
class Source:
    """One entry of data.source: where the text is, how often to repeat it, its checksum."""

    spec: str
    weight: float = 1.0
    sha256: str = ""

    @property
    def is_url(self) -> bool:
        return self.spec.startswith(("http://", "https://"))

    @property
    def is_builtin(self) -> bool:
        return self.spec.startswith("builtin:")


def sources(cfg: DataConfig) -> list[Source]:
    if isinstance(cfg.source, list):
        return [
            Source(i["path"], float(i.get("weight", 1.0)), i.get("sha256", ""))
            if isinstance(i, dict)
            else Source(i)
            for i in cfg.source
        ]
    return [Source(cfg.source, 1.0, cfg.sha256)]


def _has_text_suffix(path: Path) -> bool:
    name = path.name.removesuffix(".gz")
    return name.endswith(TEXT_SUFFIXES)


def _is_jsonl(path: Path) -> bool:
    return path.name.removesuffix(".gz").endswith(".jsonl")


def source_files(source: str) -> list[Path]:
    """A file, a directory (recursively) or a glob, as a sorted list of text files.

    Directories and globs keep .txt, .md and .jsonl files and their .gz; a file named
    directly is read whatever its name.
    """
    p = Path(source).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and _has_text_suffix(f))
    else:
        matches = glob.glob(os.path.expanduser(source), recursive=True)
        files = sorted(Path(f) for f in matches if Path(f).is_file() and _has_text_suffix(Path(f)))
    if not files:
        raise UserError(
            f"data.source {source!r}: no such file, or no .txt/.md/.jsonl(.gz) files in it "
            "(pass a file, directory, glob, URL, - for stdin, or builtin:stories)"
        )
    return files


# cached downloads verified by this process: path -> (size, mtime_ns, sha256); a corpus is read
# several times per command, and one check of a file that has not changed is enough
_verified: dict[Path, tuple[int, int, str]] = {}


class _NetworkError(Exception):
    """The download could not be made (no network, refused, cut): the cache may still help."""


def _cache_path(url: str) -> Path:
    """cache_dir()/HASH-NAME: the URL's hash keeps URLs apart, NAME (its last part, made a
    plain file name) tells a person what it is."""
    base = url.split("#")[0].split("?")[0].rstrip("/").rsplit("/", 1)[-1]
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".")[:80] or "download"
    return cache_dir() / f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{base}"


def _record_path(target: Path) -> Path:
    return target.with_name(target.name + ".json")


def _write_record(target: Path, url: str, digest: str) -> None:
    record = {"url": url, "bytes": target.stat().st_size, "sha256": digest}
    write_atomic(_record_path(target), json.dumps(record, indent=2).encode())
    st = target.stat()
    _verified[target] = (st.st_size, st.st_mtime_ns, digest)


def _cache_problem(target: Path, url: str, sha256: str) -> str | None:
    """None when the cached file is the download its record describes (and has the pinned
    sha256, if any); else what is wrong with it."""
    st = target.stat()
    seen = _verified.get(target)
    if seen is None or seen[:2] != (st.st_size, st.st_mtime_ns):
        try:
            record = json.loads(_record_path(target).read_text())
        except (OSError, ValueError):
            record = None
        digest = sha256_file(target)
        if not isinstance(record, dict) or record.get("url") != url:
            if not sha256 or digest != sha256.lower():  # else: cached before records, and pinned
                return "has no record of its download"
        elif record.get("bytes") != st.st_size or record.get("sha256") != digest:
            return "does not match the size and sha256 recorded when it was downloaded"
        _verified[target] = seen = (st.st_size, st.st_mtime_ns, digest)
    if sha256 and seen[2] != sha256.lower():
        return f"has sha256 {seen[2]}, not data.sha256 {sha256}"
    return None


def fetch(url: str, sha256: str = "", max_mb: float = 10240.0, allow_html: bool = False) -> Path:
    """Download url once into the cache (temp name, renamed when complete and verified), with
    a record of its size and sha256 beside it.

    Later calls check the cached file against that record (and against sha256 when pinned)
    and use it without the network; a file that fails the check is downloaded again.
    """
    target = _cache_path(url)
    problem = _cache_problem(target, url, sha256) if target.is_file() else None
    if target.is_file() and problem is None:
        return target
    try:
        _download(url, target, sha256, max_mb, allow_html)
    except _NetworkError as e:
        if problem:
            raise UserError(
                f"{target} (cached {url}) {problem}, and downloading it again failed ({e}); "
                "restore the network, or set data.source to a local copy"
            ) from None
        raise UserError(
            f"{url}: download failed ({e}); check the URL and the network, "
            "or set data.source to a local copy"
        ) from None
    if problem:
        console.warn(f"{target} (cached {url}) {problem}; it was downloaded again")
    return target


def _is_html(content_type: str, head: bytes) -> bool:
    start = head.removeprefix(b"\xef\xbb\xbf").lstrip()[:15].lower()
    return content_type in ("text/html", "application/xhtml+xml") or start.startswith(
        (b"<!doctype html", b"<html")
    )


def _download(url: str, target: Path, sha256: str, max_mb: float, allow_html: bool) -> None:
    """Stream url into a temp file beside target; rename it when it is complete, within
    data.max_download_mb, not an HTML page (unless allowed) and has the pinned sha256."""
    import http.client
    import urllib.error
    import urllib.request

    limit = int(max_mb * 1e6)
    too_big = UserError(
        f"{url}: larger than data.max_download_mb ({max_mb:g} MB); raise it if this is the "
        "file you mean"
    )
    with console.writing(target.parent):
        target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    console.info(f"tokenize: downloading {url}")
    h, n = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            expected = int(resp.headers.get("Content-Length") or 0)
            if expected > limit:
                raise too_big
            content_type = resp.headers.get_content_type()
            with console.writing(tmp):
                f = open(tmp, "wb")  # closed by the with below
            with f, console.progress(unit="bytes") as bar:
                task = bar.add_task("download", total=expected or None)
                while chunk := resp.read(READ_CHUNK):
                    if n == 0 and not allow_html and _is_html(content_type, chunk):
                        raise UserError(
                            f"{url}: the server sent an HTML page, not text (link the raw "
                            "file, or set data.allow_html: true if the page is the corpus)"
                        )
                    n += len(chunk)
                    if n > limit:
                        raise too_big
                    with console.writing(tmp):  # a full disk is not a network failure
                        f.write(chunk)
                    h.update(chunk)
                    bar.advance(task, len(chunk))
        if expected and n != expected:
            raise UserError(f"{url}: download ended after {n} of {expected} bytes (try again)")
        if sha256 and h.hexdigest() != sha256.lower():
            raise UserError(
                f"{url}: downloaded file has sha256 {h.hexdigest()}, not data.sha256 {sha256} "
                "(fix data.sha256 or the URL)"
            )
        with console.writing(target):
            tmp.replace(target)
    except urllib.error.HTTPError as e:
        raise UserError(f"{url}: HTTP {e.code} {e.reason} (check the URL)") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        raise _NetworkError(getattr(e, "reason", None) or type(e).__name__) from None
    finally:
        tmp.unlink(missing_ok=True)
    _write_record(target, url, h.hexdigest())
    pin = "" if sha256 else " (set data.sha256 to it to pin this download)"
    console.info(f"tokenize: downloaded {n:,} bytes, sha256 {h.hexdigest()}{pin}")


def _source_paths(src: Source, run_dir: Path | None, cfg: DataConfig) -> list[Path]:
    if src.spec == "-":
        if run_dir is None:
            raise UserError("data.source '-' (stdin) needs a run folder to spool it into")
        return [run_dir / "data" / STDIN_FILE]
    if src.is_url:
        return [fetch(src.spec, src.sha256, cfg.max_download_mb, cfg.allow_html)]
    return source_files(src.spec)


def spool_stdin(run_dir: Path) -> Path:
    """Copy stdin to the run folder once: the corpus is read more than once, and fingerprinted."""
    target = run_dir / "data" / STDIN_FILE
    tmp = target.with_name(f".{STDIN_FILE}.{os.getpid()}.tmp")
    try:
        with console.writing(target):
            with open(tmp, "wb") as f:
                shutil.copyfileobj(sys.stdin.buffer, f, READ_CHUNK)
            tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _builtin_name(spec: str) -> str:
    name = spec.removeprefix("builtin:")
    if name != "stories":
        raise UserError(f"unknown builtin corpus {spec!r} (available: builtin:stories)")
    return name


def fingerprint(
    cfg: DataConfig, seed: int, run_dir: Path | None = None, known: dict | None = None
) -> dict:
    """What the shards were made from: changes to any of it make them stale.

    Files are identified by path, size and sha256. The hash is recomputed only when size or
    mtime differ from `known` (the previous manifest's corpus), so an unchanged corpus is
    checked without reading it.
    """
    old = {
        (f["path"], f["bytes"], f["mtime_ns"]): f["sha256"]
        for s in (known or {}).get("sources", [])
        for f in s.get("files", [])
        if "mtime_ns" in f
    }
    entries = []
    all_sources = sources(cfg) + ([Source(cfg.dev)] if cfg.dev else [])
    for src in all_sources:
        entry: dict = {"source": src.spec, "weight": src.weight}
        if src.is_builtin:
            _builtin_name(src.spec)
            entry.update(mb=cfg.builtin_mb, generator=stories.VERSION)
        else:
            files = []
            for f in _source_paths(src, run_dir, cfg):
                st = f.stat()
                key = (str(f), st.st_size, st.st_mtime_ns)
                digest = old.get(key) or sha256_file(f)
                files.append(
                    {
                        "path": str(f),
                        "bytes": st.st_size,
                        "mtime_ns": st.st_mtime_ns,
                        "sha256": digest,
                    }
                )
            entry["files"] = files
        entries.append(entry)
    return {
        "source": cfg.source,
        "dev": cfg.dev,
        "text_field": cfg.text_field,
        "errors": cfg.errors,
        "seed": seed,
        "val_fraction": cfg.val_fraction,
        "sources": entries,
    }


def _same_corpus(a: dict | None, b: dict) -> bool:
    """Equal fingerprints, ignoring mtimes (a touched file with the same bytes is unchanged)."""

    def strip(fp: dict | None) -> dict | None:
        if fp is None:
            return None
        fp = json.loads(json.dumps(fp))
        for s in fp.get("sources", []):
            for f in s.get("files", []):
                f.pop("mtime_ns", None)
        return fp

    return strip(a) == strip(b)


# --------------------------------------------------------------------------- documents


def _decode(raw: bytes, path: Path, offset: int, errors: str, where: str = "") -> str:
    try:
        return raw.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path}{where}: not UTF-8 at byte offset {offset + e.start} "
            "(convert it to UTF-8, or set data.errors: replace)"
        ) from None


class _Reader:
    """Opens a file (or its .gz) and reports compressed bytes read, for the progress bar."""

    def __init__(self, path: Path, on_bytes) -> None:
        self.raw = open(path, "rb")
        self.stream = gzip.GzipFile(fileobj=self.raw) if path.name.endswith(".gz") else self.raw
        self.on_bytes = on_bytes
        self.reported = 0

    def report(self) -> None:
        pos = self.raw.tell()
        self.on_bytes(pos - self.reported)
        self.reported = pos

    def close(self) -> None:
        self.report()
        self.stream.close()
        self.raw.close()


def _text_segments(path: Path, on_bytes) -> Iterator[tuple[bytes, int]]:
    """The raw bytes between <|endoftext|> separators of a text file, with their offsets."""
    reader = _Reader(path, on_bytes)
    try:
        buf, offset, searched = bytearray(), 0, 0
        while True:
            chunk = reader.stream.read(READ_CHUNK)
            reader.report()
            if chunk:
                buf += chunk
            while True:
                i = buf.find(_SEP, searched)
                if i < 0:
                    searched = max(0, len(buf) - len(_SEP) + 1)
                    break
                yield bytes(buf[:i]), offset
                offset += i + len(_SEP)
                del buf[: i + len(_SEP)]
                searched = 0
            if not chunk:
                break
        yield bytes(buf), offset
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    finally:
        reader.close()


def _text_documents(path: Path, errors: str, on_bytes) -> Iterator[str]:
    """Documents of a text file: the pieces between <|endoftext|> separators, stripped."""
    for raw, offset in _text_segments(path, on_bytes):
        doc = _decode(raw, path, offset, errors).strip()
        if doc:
            yield doc


def _is_document(raw: bytes, errors: str) -> bool:
    """Whether raw text decodes to a document (not only whitespace), mostly without decoding.

    Bytes that strip to nothing are only ASCII whitespace; a first byte left that is ASCII but
    not \x1c-\x1f (which str.strip also removes) starts a document. Anything else is decoded
    (invalid UTF-8 under errors: strict counts; the reading pass reports it).
    """
    stripped = raw.strip()
    if not stripped:
        return False
    if stripped[0] < 0x80 and not 0x1C <= stripped[0] <= 0x1F:
        return True
    return bool(raw.decode("utf-8", "replace" if errors == "strict" else errors).strip())


def _jsonl_documents(path: Path, text_field: str, errors: str, on_bytes) -> Iterator[str]:
    """One document per line: the (dotted) text_field of each JSON object."""
    reader = _Reader(path, on_bytes)
    try:
        offset = 0
        for lineno, raw in enumerate(reader.stream, 1):
            if lineno % 1024 == 0:
                reader.report()
            line = _decode(raw, path, offset, errors, where=f":{lineno}")
            offset += len(raw)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            value = get_field(record, text_field)
            if not isinstance(value, str):
                raise UserError(
                    f"{path}:{lineno}: no string field {text_field!r} (set data.text_field)"
                )
            if errors == "replace":  # a \udcff escape in the JSON: no character, as a bad byte
                value = value.encode("utf-8", "replace").decode("utf-8")
            hint = "fix the text, or set data.errors: replace"
            value = tokenizer.check_text(value, f"{path}:{lineno}", hint)
            if value.strip():
                yield value
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    finally:
        reader.close()


def _builtin_documents(cfg: DataConfig, seed: int, on_bytes) -> Iterator[str]:
    """The same documents as splitting stories.generate(builtin_mb), without holding them."""
    total, limit = 0, int(cfg.builtin_mb * 1e6)
    sep_bytes = len(_SEP) + 2
    for story in stories.iter_stories(seed):
        if total >= limit:
            break
        n = len(story.encode("utf-8")) + sep_bytes
        total += n
        on_bytes(n)
        if story.strip():
            yield story.strip()


def iter_documents(
    cfg: DataConfig, seed: int, run_dir: Path | None = None, on_bytes=lambda n: None
) -> Iterator[tuple[Source, str]]:
    """Every document of every source, in order, one at a time."""
    for src in sources(cfg):
        if src.is_builtin:
            _builtin_name(src.spec)
            for doc in _builtin_documents(cfg, seed, on_bytes):
                yield src, doc
            continue
        for f in _source_paths(src, run_dir, cfg):
            if _is_jsonl(f):
                docs = _jsonl_documents(f, cfg.text_field, cfg.errors, on_bytes)
            else:
                docs = _text_documents(f, cfg.errors, on_bytes)
            for doc in docs:
                yield src, doc


def corpus_bytes(cfg: DataConfig, run_dir: Path | None = None) -> int:
    """Bytes the sources hold on disk (compressed size for .gz): the progress bars' total."""
    total = 0
    for src in sources(cfg):
        if src.is_builtin:
            total += int(cfg.builtin_mb * 1e6)
        else:
            total += sum(f.stat().st_size for f in _source_paths(src, run_dir, cfg))
    return total


# --------------------------------------------------------------------------- split


class Splitter:
    """Routes documents to train or val, one at a time, the same way on every pass.

    Each document goes whole to one split. The choice is random (seeded) but steered so the
    validation share of characters stays within one document of val_fraction at every point.
    A weight repeats a source's documents (2 = twice; 0.5 = a seeded half of them), all
    copies in the same split. With tail_chars (fewer than 100 documents) the last tail_chars
    characters of the text go to val instead, as nanoGPT does.
    """

    def __init__(self, val_fraction: float, seed: int, tail_chars: int | None = None) -> None:
        self.fraction = val_fraction
        self.rng = random.Random(seed)
        self.copies_rng = random.Random(seed + 1)
        self.tail_chars = tail_chars
        self.total = 0  # characters routed so far (copies included)
        self.taken = 0  # of which went to val
        self.cut: int | None = None

    def copies(self, weight: float) -> int:
        whole = int(weight)
        frac = weight - whole
        return whole + (1 if frac and self.copies_rng.random() < frac else 0)

    def route(self, text: str, weight: float = 1.0) -> Iterator[tuple[str, str, bool]]:
        """(split, text, ends_document) for each copy, or the two halves of a cut document."""
        n = self.copies(weight)
        if self.tail_chars is not None:
            for _ in range(n):
                yield from self._route_tail(text)
            return
        size = len(text) * n
        if not size:
            return
        self.total += size
        want = self.fraction * self.total - self.taken
        to_val = self.rng.random() < min(1.0, max(0.0, want / size))
        if to_val:
            self.taken += size
        for _ in range(n):
            yield ("val" if to_val else "train"), text, True

    def _route_tail(self, text: str) -> Iterator[tuple[str, str, bool]]:
        start = self.total
        self.total += len(text)
        cut = self.tail_chars
        if self.total <= cut:
            yield "train", text, True
        elif start >= cut:
            yield "val", text, True
        else:
            yield "train", text[: cut - start], False
            yield "val", text[cut - start :], True


def tail_split_chars(cfg: DataConfig, seed: int, run_dir: Path | None = None) -> int | None:
    """With fewer than 100 documents: characters that go to train (the rest is val)."""
    if cfg.dev or _has_many_text_documents(cfg, run_dir):
        return None
    count, splitter = 0, Splitter(cfg.val_fraction, seed, tail_chars=2**62)
    for src, doc in iter_documents(cfg, seed, run_dir):
        count += 1
        if count >= MIN_DOCS_FOR_DOC_SPLIT:
            return None
        for _ in splitter.route(doc, src.weight):
            pass
    if count == 0:
        raise UserError(f"data.source {cfg.source!r}: the corpus is empty")
    return splitter.total - max(1, int(splitter.total * cfg.val_fraction))


def _has_many_text_documents(cfg: DataConfig, run_dir: Path | None) -> bool:
    """True when plain-text files at the start of the corpus hold MIN_DOCS_FOR_DOC_SPLIT
    documents, found by scanning bytes (no decoding). False means: count the slow way.
    """
    count = 0
    for src in sources(cfg):
        if src.is_builtin:
            return False
        for f in _source_paths(src, run_dir, cfg):
            if _is_jsonl(f):
                return False
            for raw, _ in _text_segments(f, lambda n: None):
                if _is_document(raw, cfg.errors):
                    count += 1
                    if count >= MIN_DOCS_FOR_DOC_SPLIT:
                        return True
    return False


def routed(
    cfg: DataConfig, seed: int, run_dir: Path | None, tail: int | None, on_bytes=lambda n: None
) -> Iterator[tuple[str, str, bool]]:
    """The whole corpus as (split, text, ends_document); with data.dev, source -> train."""
    splitter = Splitter(cfg.val_fraction, seed, tail)
    empty = True
    for src, doc in iter_documents(cfg, seed, run_dir, on_bytes):
        empty = False
        if cfg.dev:
            for _ in range(splitter.copies(src.weight)):
                yield "train", doc, True
        else:
            yield from splitter.route(doc, src.weight)
    if empty:
        raise UserError(f"data.source {cfg.source!r}: the corpus is empty")
    if cfg.dev:
        dev = DataConfig(
            source=cfg.dev,
            text_field=cfg.text_field,
            errors=cfg.errors,
            max_download_mb=cfg.max_download_mb,
            allow_html=cfg.allow_html,
        )
        for _, doc in iter_documents(dev, seed, run_dir, on_bytes):
            yield "val", doc, True


_SAFE_CUT = re.compile(r"\n(?=\S)")


def safe_pieces(text: str, size: int = MAX_PIECE_CHARS) -> list[str]:
    """Cut a long text after a newline that is followed by a non-space character.

    The GPT-2 pre-tokenizer never joins such a newline with what follows, so encoding the
    pieces one by one gives exactly the ids of encoding the whole text.
    """
    pieces, start = [], 0
    while len(text) - start > size:
        m = _SAFE_CUT.search(text, start + size)
        if m is None:
            break
        pieces.append(text[start : m.end()])
        start = m.end()
    pieces.append(text[start:])
    return pieces


# --------------------------------------------------------------------------- shards


def unigram_bits_from_counts(counts: np.ndarray, n_bytes: int) -> float:
    n = int(counts.sum())
    if n == 0:
        return 0.0
    p = counts[counts > 0] / n
    bits_per_token = float(-(p * np.log2(p)).sum())
    return bits_per_token * n / max(n_bytes, 1)


class ShardWriter:
    """Appends encoded batches to data/.{train,val}.bin temp files; renamed only on commit.

    Encoding runs in worker threads (both encoders release the GIL), at most a few batches
    ahead of the writer, so memory stays bounded whatever the corpus size.
    """

    def __init__(self, data_dir: Path, encoder: tokenizer.Encoder, workers: int) -> None:
        self.data_dir = data_dir
        self.encoder = encoder
        self.vocab = encoder.tok.get_vocab_size()
        self.tmp = {s: data_dir / f".{s}.bin.{os.getpid()}.tmp" for s in ("train", "val")}
        with console.writing(data_dir):
            self.files = {s: open(p, "wb") for s, p in self.tmp.items()}
        self.stats = {s: {"documents": 0, "bytes": 0, "tokens": 0} for s in ("train", "val")}
        self.val_counts = np.zeros(self.vocab, dtype=np.int64)
        self.pool = ThreadPoolExecutor(max_workers=workers)
        self.max_pending = 4 * workers
        self.pending: deque = deque()
        self.batches = {s: ([], [], 0) for s in ("train", "val")}

    def add(self, split_name: str, text: str, ends_document: bool) -> None:
        st = self.stats[split_name]
        st["documents"] += ends_document
        st["bytes"] += len(text) if text.isascii() else len(text.encode("utf-8"))
        for i, piece in enumerate(pieces := safe_pieces(text)):
            texts, ends, chars = self.batches[split_name]
            texts.append(piece)
            ends.append(ends_document and i == len(pieces) - 1)
            chars += len(piece)
            self.batches[split_name] = (texts, ends, chars)
            if chars >= BATCH_CHARS:
                self._submit(split_name)

    def _submit(self, split_name: str) -> None:
        texts, ends, _ = self.batches[split_name]
        if not texts:
            return
        self.batches[split_name] = ([], [], 0)
        self.pending.append((split_name, self.pool.submit(self.encoder.encode, texts, ends)))
        while len(self.pending) > self.max_pending:
            self._write_oldest()

    def _write_oldest(self) -> None:
        split_name, future = self.pending.popleft()
        ids = future.result()
        with console.writing(self.data_dir / f"{split_name}.bin"):
            self.files[split_name].write(ids)  # the array's buffer, without a copy
        self.stats[split_name]["tokens"] += len(ids)
        if split_name == "val":
            self.val_counts += np.bincount(ids, minlength=self.vocab)

    def commit(self) -> dict:
        for s in ("train", "val"):
            self._submit(s)
        while self.pending:
            self._write_oldest()
        for s, f in self.files.items():
            with console.writing(self.data_dir / f"{s}.bin"):
                f.flush()
                os.fsync(f.fileno())
                f.close()
                self.tmp[s].replace(self.data_dir / f"{s}.bin")
        self.pool.shutdown()
        return self.stats

    def abort(self) -> None:
        for _, future in self.pending:
            future.cancel()
        self.pool.shutdown(wait=True, cancel_futures=True)
        for s, f in self.files.items():
            f.close()
            self.tmp[s].unlink(missing_ok=True)


def _tokenizer_settings(cfg: TokenizerConfig) -> dict:
    return {
        "vocab_size": cfg.vocab_size,
        "special_tokens": cfg.special_tokens,
        "min_frequency": cfg.min_frequency,
        "train_bytes": cfg.train_bytes,
    }


def read_manifest(run_dir: Path) -> dict | None:
    path = run_dir / "data" / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{path}: not valid JSON (delete it to rebuild the shards)") from None
    version = manifest.get("format_version", 0)
    if version > MANIFEST_VERSION:
        raise UserError(
            f"{path}: format_version {version} is newer than this gptcli reads "
            f"({MANIFEST_VERSION}); upgrade gptcli"
        )
    unknown = sorted(set(manifest) - MANIFEST_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown key {unknown[0]!r} (written by a newer gptcli?)")
    if version < 3:
        _upgrade_builtin_fingerprint(path, manifest)
    return manifest


def _upgrade_builtin_fingerprint(path: Path, manifest: dict) -> None:
    """Manifests before version 3 fingerprinted a builtin: corpus by the generator's source
    bytes; take such a corpus as unchanged (it cannot be checked) rather than refuse the run."""
    builtin = [s for s in manifest.get("corpus", {}).get("sources", []) if "generator" in s]
    for entry in builtin:
        entry["generator"] = stories.VERSION
    if builtin:
        console.warn(
            f"{path} was written by an older gptcli: its builtin corpus is taken as unchanged "
            "(it is now fingerprinted by the generator's version)"
        )


def write_manifest(run_dir: Path, manifest: dict) -> None:
    write_atomic(run_dir / "data" / "manifest.json", json.dumps(manifest, indent=2).encode())


def _tokenizer_key(recipe: Recipe, given_tokenizer: Path | None) -> dict:
    if given_tokenizer is not None:
        return {"from": sha256_file(given_tokenizer)}
    return _tokenizer_settings(recipe.tokenizer)


def _uses_stdin(cfg: DataConfig) -> bool:
    return any(s.spec == "-" for s in sources(cfg))


def is_up_to_date(
    recipe: Recipe, run_dir: Path, given_tokenizer: Path | None = None, fp: dict | None = None
) -> bool:
    """True when the run's shards were made from this corpus with these tokenizer settings."""
    manifest = read_manifest(run_dir)
    if not manifest:
        return False
    if _uses_stdin(recipe.data) and not (run_dir / "data" / STDIN_FILE).is_file():
        return False
    tok_path = run_dir / tokenizer.TOKENIZER_FILE
    if fp is None:
        fp = fingerprint(recipe.data, recipe.seed, run_dir, manifest.get("corpus"))
    if not _same_corpus(manifest.get("corpus"), fp):
        return False
    if manifest.get("tokenizer_settings") != _tokenizer_key(recipe, given_tokenizer):
        return False
    if not tok_path.is_file() or sha256_file(tok_path) != manifest.get("tokenizer_sha256"):
        return False
    itemsize = np.dtype(manifest["dtype"]).itemsize
    for name in ("train", "val"):
        shard = run_dir / "data" / f"{name}.bin"
        if not shard.is_file() or shard.stat().st_size != manifest[name]["tokens"] * itemsize:
            return False
    return True


def _train_tokenizer(recipe: Recipe, run_dir: Path, tail: int | None, total: int):
    """BPE on the train split, or on a seeded sample of it when the corpus is big."""
    cfg = recipe.tokenizer
    keep = min(1.0, cfg.train_bytes / max(total, 1))
    rng = random.Random(recipe.seed + 2)
    note = "" if keep >= 1 else f" on a {keep:.0%} sample (tokenizer.train_bytes)"
    console.info(f"tokenize: training a {cfg.vocab_size}-token byte-level BPE{note}")
    t0 = time.perf_counter()
    with console.progress(unit="bytes") as bar:
        task = bar.add_task("train BPE", total=total)

        def batches() -> Iterator[list[str]]:
            batch: list[str] = []
            advance = lambda n: bar.advance(task, n)  # noqa: E731
            for split_name, text, _ in routed(recipe.data, recipe.seed, run_dir, tail, advance):
                if split_name == "train" and (keep >= 1 or rng.random() < keep):
                    batch.extend(safe_pieces(text))
                    if len(batch) >= 1024:
                        yield batch
                        batch = []
            if batch:
                yield batch

        tok = tokenizer.train(batches(), cfg.vocab_size, cfg.special_tokens, cfg.min_frequency)
    console.info(f"tokenize: BPE trained in {time.perf_counter() - t0:.1f}s")
    return tok


def prepare(
    recipe: Recipe, run_dir: Path, given_tokenizer: Path | None = None
) -> tuple[dict, bool]:
    """Train the tokenizer (unless given or already trained on this corpus) and write shards.

    Streams the corpus: once to count documents when there may be fewer than 100, once to
    train the BPE, once to encode, never holding more than a few batches. Returns the
    manifest and whether shards were written (so callers need not check the corpus again);
    skips all work when the manifest says the shards are up to date.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "data").mkdir(exist_ok=True)
    tok_path = run_dir / tokenizer.TOKENIZER_FILE
    if _uses_stdin(recipe.data):
        spool_stdin(run_dir)
    manifest = read_manifest(run_dir)
    fp = fingerprint(recipe.data, recipe.seed, run_dir, (manifest or {}).get("corpus"))
    if is_up_to_date(recipe, run_dir, given_tokenizer, fp):
        console.info(f"tokenize: shards in {run_dir / 'data'} are up to date")
        if manifest["format_version"] < MANIFEST_VERSION:  # upgraded on reading: keep it so
            manifest = {**manifest, "corpus": fp, "format_version": MANIFEST_VERSION}
            write_manifest(run_dir, manifest)
        return manifest, False
    settings = _tokenizer_key(recipe, given_tokenizer)
    started = time.perf_counter()
    console.info(f"tokenize: reading {recipe.data.source}")
    tail = tail_split_chars(recipe.data, recipe.seed, run_dir)
    total = corpus_bytes(recipe.data, run_dir)

    if given_tokenizer is not None:
        tok = tokenizer.load(given_tokenizer)
        tokenizer.save(tok, tok_path)
    elif (
        manifest
        and _same_corpus(manifest.get("corpus"), fp)
        and manifest.get("tokenizer_settings") == settings
        and tok_path.is_file()
    ):
        tok = tokenizer.load(tok_path)
        console.info("tokenize: reusing the tokenizer trained on this corpus")
    else:
        tok = _train_tokenizer(recipe, run_dir, tail, total)
        tokenizer.save(tok, tok_path)

    encoder = tokenizer.Encoder(tok)
    writer = ShardWriter(run_dir / "data", encoder, workers=max(1, os.cpu_count() or 1))
    try:
        with console.progress(unit="bytes") as bar:
            task = bar.add_task(f"encode ({encoder.name})", total=total)
            advance = lambda n: bar.advance(task, n)  # noqa: E731
            for split_name, text, ends in routed(recipe.data, recipe.seed, run_dir, tail, advance):
                writer.add(split_name, text, ends)
            stats = writer.commit()
    except BaseException:
        writer.abort()
        raise
    t, v = stats["train"], stats["val"]
    n_bytes, n_tokens = t["bytes"] + v["bytes"], t["tokens"] + v["tokens"]
    manifest = {
        "format_version": MANIFEST_VERSION,
        "corpus": fp,
        "tokenizer_settings": settings,
        "tokenizer_sha256": sha256_file(tok_path),
        "vocab_size": tok.get_vocab_size(),
        "dtype": encoder.dtype.name,
        "encoder": encoder.name,
        "train": t,
        "val": v,
        "bytes_per_token": round(n_bytes / max(n_tokens, 1), 4),
        "val_unigram_bpb": unigram_bits_from_counts(writer.val_counts, v["bytes"]),
        "elapsed_s": round(time.perf_counter() - started, 3),
    }
    write_manifest(run_dir, manifest)
    console.info(
        f"tokenize: {t['documents'] + v['documents']:,} documents, {n_bytes / 1e6:.2f} MB; "
        f"train {t['tokens']:,} tokens ({t['bytes'] / 1e6:.2f} MB) / "
        f"val {v['tokens']:,} tokens ({v['bytes'] / 1e6:.2f} MB); "
        f"{manifest['bytes_per_token']:.2f} bytes per token; {manifest['elapsed_s']:.1f}s "
        f"({n_bytes / 1e6 / max(manifest['elapsed_s'], 1e-9):.1f} MB/s, {encoder.name})"
    )
    return manifest, True


def load_shard(run_dir: Path, split_name: str, manifest: dict) -> np.ndarray:
    path = run_dir / "data" / f"{split_name}.bin"
    return np.memmap(path, dtype=np.dtype(manifest["dtype"]), mode="r")


# --------------------------------------------------------------------------- batches


class Batches:
    """Windows of block_size + 1 tokens in shuffled epochs, chosen by (seed, index) alone.

    Because a batch depends only on its index, a resumed run sees exactly the batches the
    uninterrupted run would have seen, with no sampler state to save.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int) -> None:
        if len(tokens) <= block_size + 1:
            raise UserError(
                f"the training split has {len(tokens)} tokens, fewer than block_size + 2 "
                f"({block_size + 2}); use more text or a smaller model.block_size"
            )
        self.tokens = tokens
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed
        # windows of block_size + 1 tokens that fit at any offset below block_size
        self.windows_per_epoch = max(1, (len(tokens) - 1 - block_size) // block_size)
        self.batches_per_epoch = max(1, self.windows_per_epoch // batch_size)
        self._epoch: tuple | None = None  # (epoch, offset, window order): derived, a cache

    def get(self, index: int) -> tuple:
        """Batch `index`: epochs of non-overlapping windows in a shuffled order, so every token
        is trained on once per epoch; each epoch shifts the window grid by a random offset."""
        import torch

        epoch, k = divmod(index, self.batches_per_epoch)
        if self._epoch is None or self._epoch[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            offset = int(torch.randint(self.block_size, (1,), generator=g))
            order = torch.randperm(self.windows_per_epoch, generator=g)
            self._epoch = (epoch, offset, order)
        _, offset, order = self._epoch
        rows = torch.arange(k * self.batch_size, (k + 1) * self.batch_size)
        picked = order[rows % self.windows_per_epoch]  # wraps only when a split is tiny
        return self._windows((offset + picked * self.block_size).tolist())

    def _windows(self, starts: list[int]) -> tuple:
        import torch

        rows = np.stack([self.tokens[s : s + self.block_size + 1] for s in starts]).astype(np.int64)
        data = torch.from_numpy(rows)
        return data[:, :-1], data[:, 1:]

    def eval_batches(self, n_batches: int) -> list[tuple]:
        """Fixed, evenly spaced windows, so every evaluation measures the same tokens."""
        span = max(len(self.tokens) - self.block_size - 1, 1)
        n = min(n_batches * self.batch_size, max(1, span // self.block_size))
        starts = [math.floor(i * span / n) for i in range(n)]
        return [
            self._windows(starts[i : i + self.batch_size])
            for i in range(0, len(starts), self.batch_size)
        ]
