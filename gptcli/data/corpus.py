"""A corpus: the recipe's sources, the files each names, their documents and fingerprint.

Every source goes through one interface whatever its kind (registry.KINDS picks the module
that reads it): a kind that names files (a download, the spooled stdin, a file, directory or
glob) has them read by the reader of their format; any other kind (builtin: corpora are
generated, hf: datasets streamed from the Hub) yields its own documents, size and identity.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from types import ModuleType

from gptcli.console import UserError
from gptcli.data import curate, registry, text
from gptcli.data.streams import Reading
from gptcli.files import sha256_file
from gptcli.recipe import DataConfig, SourceConfig


def kind(src: SourceConfig) -> registry.Kind:
    """The kind of source src.path selects."""
    return registry.kind_of(src.path)


def _module(src: SourceConfig) -> ModuleType:
    return registry.kind_module(kind(src))


def label(src: SourceConfig) -> str:
    """The source in words: its string, and an hf: dataset's split."""
    return kind(src).label.format(**asdict(src))


def files_of(src: SourceConfig, cfg: DataConfig, run_dir: Path | None) -> list[Path] | None:
    """The files a source names (a URL downloaded first), or None for a kind that yields its
    own documents."""
    return _module(src).files(src, cfg, run_dir) if kind(src).names_files else None


def read_as(src: SourceConfig, files: list[Path] | None) -> str:
    """How the source was read, in words: its kind, or the formats of its files (and how they
    came)."""
    formats = sorted({registry.format_of(f).name for f in files or []})
    zipped = sorted({registry.compression(f) for f in files or []} - {""})
    words = ", ".join(formats) + (f" ({', '.join(zipped)})" if zipped else "")
    return kind(src).tally.format(name=kind(src).name, formats=words)


def _tally_entry(tally: dict | None, src: SourceConfig) -> dict:
    if tally is None:
        return {"documents": 0, "skipped": Counter()}
    name = label(src)
    return tally.setdefault(
        name, {"source": name, "kind": "", "documents": 0, "skipped": Counter()}
    )


def _documents(
    src: SourceConfig, cfg: DataConfig, seed: int, run_dir: Path | None, reading: Reading
) -> tuple[str, Iterator[str]]:
    """How the source is read, in words, and its documents."""
    files = files_of(src, cfg, run_dir)
    if files is None:
        return read_as(src, None), _module(src).read(src, cfg, seed, reading)
    docs = (
        doc for f in files for doc in registry.reader(registry.format_of(f)).documents(f, reading)
    )
    return read_as(src, files), docs


def iter_documents(
    cfg: DataConfig,
    seed: int,
    run_dir: Path | None = None,
    on_bytes: Callable[[int], None] = lambda n: None,
    tally: dict | None = None,
) -> Iterator[tuple[SourceConfig, str]]:
    """Every document of every source, in order, one at a time.

    With tally, each source's kind, documents read and rows skipped (by reason) are counted
    into it, keyed by the source string (and an hf: dataset's split).
    """
    for src in cfg.sources():
        entry = _tally_entry(tally, src)
        reading = Reading(src.text_field, cfg.errors, on_bytes, entry["skipped"])
        entry["kind"], docs = _documents(src, cfg, seed, run_dir, reading)
        for doc in docs:
            entry["documents"] += 1
            yield src, doc


def records(
    src: SourceConfig, cfg: DataConfig, run_dir: Path | None = None, seed: int = 0
) -> list[tuple[str, dict]]:
    """(where, record) for each example of a task's source (data.source or data.dev); seed
    decides a generated source's examples (builtin:story-chat), as it does its text."""
    if not src.path:
        raise UserError(
            "data.source is empty: name the task's training file (.jsonl, .csv, .tsv, .parquet)"
        )
    if not kind(src).examples:
        raise UserError(
            f"data.source {src.path!r}: a task reads its examples from files, URLs "
            "(.jsonl, .csv, .tsv, .parquet, .arrow) or builtin:story-chat"
        )
    files = files_of(src, cfg, run_dir)
    if files is None:
        return list(_module(src).examples(src, cfg, seed))
    out: list[tuple[str, dict]] = []
    for f in files:
        out.extend(registry.reader(registry.records_format(f)).records(f))
    return out


def corpus_bytes(cfg: DataConfig, run_dir: Path | None = None) -> int | None:
    """Bytes the sources hold on disk (compressed size for .gz/.zst): the progress bars' total
    (None when an hf: dataset's info does not state its size)."""
    total = 0
    for src in cfg.sources():
        files = files_of(src, cfg, run_dir)
        if files is not None:
            total += sum(f.stat().st_size for f in files)
        elif (n := _module(src).stated_bytes(src, cfg)) is None:
            return None
        else:
            total += n
    return total


def text_bytes(cfg: DataConfig, run_dir: Path | None = None) -> int | None:
    """About how many bytes of text the sources hold: a columnar file's text column before
    compression, other files' size on disk, an hf: dataset's stated size (None when an hf:
    dataset's info does not state it)."""
    total = 0
    for src in cfg.sources():
        files = files_of(src, cfg, run_dir)
        if files is None:
            if (n := _module(src).stated_bytes(src, cfg)) is None:
                return None
            total += n
            continue
        for f in files:
            total += registry.reader(registry.format_of(f)).size(f, src.text_field)
    return total


def fingerprint(
    cfg: DataConfig, seed: int, run_dir: Path | None = None, known: dict | None = None
) -> dict:
    """What the shards were made from: changes to any of it make them stale.

    Files are identified by path, size and sha256. The hash is recomputed only when size or
    mtime differ from `known` (the previous manifest's corpus), so an unchanged corpus is
    checked without reading it. Other kinds say what identifies them (an hf: dataset: its
    name, config, split and the revision its builder resolved), also without reading them.
    The curation rules, when any is on, are part of it (see curate.settings).
    """
    known_sources = (known or {}).get("sources", [])
    old = {
        (f["path"], f["bytes"], f["mtime_ns"]): f["sha256"]
        for s in known_sources
        for f in s.get("files", [])
        if "mtime_ns" in f
    }
    entries = []
    dev = cfg.dev_source()
    for src in cfg.sources() + ([dev] if dev else []):
        entry: dict = {"source": src.path, "weight": src.weight}
        files = files_of(src, cfg, run_dir)
        if files is None:
            entry.update(_module(src).fingerprint(src, cfg, known_sources))
        else:
            entry["files"] = [_file_identity(f, old) for f in files]
        entries.append(entry)
    out = {
        "source": cfg.source,
        "dev": cfg.dev,
        "text_field": cfg.text_field,
        "errors": cfg.errors,
        "seed": seed,
        "val_fraction": cfg.val_fraction,
        "sources": entries,
    }
    curation = curate.settings(cfg)  # absent while every rule is off: older runs stay up to date
    return out if curation is None else {**out, "curation": curation}


def _file_identity(f: Path, old: dict) -> dict:
    """A file's path, size, mtime and sha256 (taken from old while size and mtime match)."""
    st = f.stat()
    digest = old.get((str(f), st.st_size, st.st_mtime_ns)) or sha256_file(f)
    return {"path": str(f), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}


def same_corpus(a: dict | None, b: dict) -> bool:
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


def has_many_text_documents(cfg: DataConfig, run_dir: Path | None, many: int) -> bool:
    """True when plain-text files at the start of the corpus hold `many` documents, found by
    scanning bytes (no decoding). False means: count the slow way."""
    count = 0
    for src in cfg.sources():
        files = files_of(src, cfg, run_dir)
        if files is None:
            return False
        for f in files:
            if registry.format_of(f) is not registry.TEXT:
                return False
            count += text.count_documents(f, cfg.errors, many - count)
            if count >= many:
                return True
    return False
