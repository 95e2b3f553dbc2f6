"""A corpus: the recipe's sources, the files each names, their documents and fingerprint.

Every source goes through one interface whatever its kind: the files it names (a download, the
spooled stdin, a file, directory or glob), their documents or records by the reader the
registry picks, their fingerprint and their size. builtin: corpora are generated instead, and
hf: datasets are streamed from the Hub.
"""

from __future__ import annotations

import glob
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from gptcli import stories
from gptcli.console import UserError
from gptcli.data import builtin, hub, registry, stdin, text, url
from gptcli.data.streams import Reading
from gptcli.files import sha256_file
from gptcli.recipe import DataConfig


@dataclass
class Source:
    """One entry of data.source: where the text is, how often to repeat it, its checksum, the
    field that holds its text and, for an hf: dataset, its config, split and revision."""

    spec: str
    weight: float = 1.0
    sha256: str = ""
    text_field: str = "text"
    config: str = ""
    split: str = "train"
    revision: str = ""

    @property
    def kind(self) -> str:
        return registry.spec_kind(self.spec)

    @property
    def label(self) -> str:
        """The source in words: its string, and an hf: dataset's split."""
        return f"{self.spec} ({self.split})" if self.kind == "hf" else self.spec

    @property
    def dataset(self) -> hub.Dataset:
        """The Hub dataset an hf: source names."""
        return hub.Dataset(hub.dataset_name(self.spec), self.config, self.split, self.revision)


def source_of(item: str | dict, text_field: str, sha256: str = "") -> Source:
    """A source from its string or its {path, weight, sha256, text_field, config, split,
    revision} mapping."""
    if not isinstance(item, dict):
        return Source(item, sha256=sha256, text_field=text_field)
    return Source(
        item["path"],
        float(item.get("weight", 1.0)),
        item.get("sha256", sha256),
        item.get("text_field", text_field),
        item.get("config", ""),
        item.get("split", "train"),
        item.get("revision", ""),
    )


def sources(cfg: DataConfig) -> list[Source]:
    if isinstance(cfg.source, list):
        return [source_of(i, cfg.text_field) for i in cfg.source]
    return [source_of(cfg.source, cfg.text_field, cfg.sha256)]


def dev_source(cfg: DataConfig) -> Source | None:
    """data.dev as a source (a file, URL or hf: dataset), or None when unset."""
    return source_of(cfg.dev, cfg.text_field) if cfg.dev else None


def source_files(spec: str) -> list[Path]:
    """A file, a directory (recursively) or a glob, as a sorted list of files.

    Directories and globs keep the files whose name gives a known format; a file named
    directly is read whatever its name (as text when the name says nothing).
    """
    p = Path(spec).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        candidates = p.rglob("*")
    else:
        candidates = (Path(f) for f in glob.glob(os.path.expanduser(spec), recursive=True))
    files = sorted(f for f in candidates if f.is_file() and registry.known_format(f))
    if not files:
        raise UserError(
            f"data.source {spec!r}: no such file, or no {registry.listed_suffixes()} files in "
            "it (pass a file, directory, glob, URL, - for stdin, or builtin:stories)"
        )
    return files


def files_of(src: Source, run_dir: Path | None, cfg: DataConfig) -> list[Path]:
    """The files a (non-builtin) source names, downloading a URL first."""
    if src.kind == "stdin":
        return [stdin.path(run_dir)]
    if src.kind == "url":
        return [url.fetch(src.spec, src.sha256, cfg.max_download_mb, cfg.allow_html)]
    return source_files(src.spec)


def kind_name(src: Source, files: list[Path]) -> str:
    """The source's kind in words: builtin, or the formats of its files (and how they came)."""
    if src.kind in ("builtin", "hf"):
        return src.kind
    formats = sorted({registry.format_of(f).name for f in files})
    zipped = sorted({registry.compression(f) for f in files} - {""})
    words = ", ".join(formats) + (f" ({', '.join(zipped)})" if zipped else "")
    return words if src.kind == "path" else f"{src.kind}: {words}"


def _tally_entry(tally: dict | None, src: Source) -> dict:
    if tally is None:
        return {"documents": 0, "skipped": Counter()}
    return tally.setdefault(
        src.label, {"source": src.label, "kind": "", "documents": 0, "skipped": Counter()}
    )


def iter_documents(
    cfg: DataConfig,
    seed: int,
    run_dir: Path | None = None,
    on_bytes: Callable[[int], None] = lambda n: None,
    tally: dict | None = None,
) -> Iterator[tuple[Source, str]]:
    """Every document of every source, in order, one at a time.

    With tally, each source's kind, documents read and rows skipped (by reason) are counted
    into it, keyed by the source string (and an hf: dataset's split).
    """
    for src in sources(cfg):
        entry = _tally_entry(tally, src)
        if src.kind == "builtin":
            builtin.check_name(src.spec)
            entry["kind"] = "builtin"
            docs: Iterator[str] = builtin.documents(cfg.builtin_mb, seed, on_bytes)
            for doc in docs:
                entry["documents"] += 1
                yield src, doc
            continue
        reading = Reading(src.text_field, cfg.errors, on_bytes, entry["skipped"])
        if src.kind == "hf":
            entry["kind"] = "hf"
            for doc in hub.documents(src.dataset, reading):
                entry["documents"] += 1
                yield src, doc
            continue
        files = files_of(src, run_dir, cfg)
        entry["kind"] = kind_name(src, files)
        for f in files:
            for doc in registry.reader(registry.format_of(f)).documents(f, reading):
                entry["documents"] += 1
                yield src, doc


def records(src: Source, cfg: DataConfig, run_dir: Path | None = None) -> list[tuple[str, dict]]:
    """(where, record) for each example of a task's source (data.source or data.dev)."""
    if not src.spec:
        raise UserError(
            "data.source is empty: name the task's training file (.jsonl, .csv, .tsv, .parquet)"
        )
    if src.kind in ("builtin", "stdin"):
        raise UserError(
            f"data.source {src.spec!r}: a task reads its examples from files or URLs "
            "(.jsonl, .csv, .tsv, .parquet, .arrow)"
        )
    if src.kind == "hf":
        return list(hub.records(src.dataset))
    out: list[tuple[str, dict]] = []
    for f in files_of(src, run_dir, cfg):
        out.extend(registry.reader(registry.records_format(f)).records(f))
    return out


def corpus_bytes(cfg: DataConfig, run_dir: Path | None = None) -> int | None:
    """Bytes the sources hold on disk (compressed size for .gz/.zst): the progress bars' total
    (None when an hf: dataset's info does not state its size)."""
    total = 0
    for src in sources(cfg):
        if src.kind == "builtin":
            total += int(cfg.builtin_mb * 1e6)
        elif src.kind == "hf":
            if (n := hub.size(src.dataset)) is None:
                return None
            total += n
        else:
            total += sum(f.stat().st_size for f in files_of(src, run_dir, cfg))
    return total


def text_bytes(cfg: DataConfig, run_dir: Path | None = None) -> int | None:
    """About how many bytes of text the sources hold: a columnar file's text column before
    compression, other files' size on disk, an hf: dataset's stated size (None when an hf:
    dataset's info does not state it)."""
    total = 0
    for src in sources(cfg):
        if src.kind == "builtin":
            total += int(cfg.builtin_mb * 1e6)
            continue
        if src.kind == "hf":
            if (n := hub.size(src.dataset)) is None:
                return None
            total += n
            continue
        for f in files_of(src, run_dir, cfg):
            total += registry.reader(registry.format_of(f)).size(f, src.text_field)
    return total


def fingerprint(
    cfg: DataConfig, seed: int, run_dir: Path | None = None, known: dict | None = None
) -> dict:
    """What the shards were made from: changes to any of it make them stale.

    Files are identified by path, size and sha256. The hash is recomputed only when size or
    mtime differ from `known` (the previous manifest's corpus), so an unchanged corpus is
    checked without reading it. An hf: dataset is identified by its name, config, split and
    the revision its builder resolved, also without reading it.
    """
    old = {
        (f["path"], f["bytes"], f["mtime_ns"]): f["sha256"]
        for s in (known or {}).get("sources", [])
        for f in s.get("files", [])
        if "mtime_ns" in f
    }
    entries = []
    dev = dev_source(cfg)
    for src in sources(cfg) + ([dev] if dev else []):
        entry: dict = {"source": src.spec, "weight": src.weight}
        if src.kind == "builtin":
            builtin.check_name(src.spec)
            entry.update(mb=cfg.builtin_mb, generator=stories.VERSION)
        elif src.kind == "hf":
            entry.update(hub.identity(src.dataset, (known or {}).get("sources", [])))
        else:
            files = []
            for f in files_of(src, run_dir, cfg):
                st = f.stat()
                digest = old.get((str(f), st.st_size, st.st_mtime_ns)) or sha256_file(f)
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
    for src in sources(cfg):
        if src.kind in ("builtin", "hf"):
            return False
        for f in files_of(src, run_dir, cfg):
            if registry.format_of(f) is not registry.TEXT:
                return False
            count += text.count_documents(f, cfg.errors, many - count)
            if count >= many:
                return True
    return False
