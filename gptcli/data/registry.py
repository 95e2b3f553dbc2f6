"""What kind a data source is, decided in one place: the string's form, then the file's name.

A source string is builtin:NAME, hf:OWNER/NAME (a Hub dataset), an http(s) URL, - (stdin) or a
path (a file, directory or glob); a new kind is one module and one line in KINDS. The files a
source names are read by the format their name gives (after a .gz or .zst compression suffix);
a new format is one reader module and one line in FORMATS.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

COMPRESSIONS = (".gz", ".zst")


@dataclass(frozen=True)
class Format:
    """A file format: its name, the suffixes that select it and the module that reads it."""

    name: str
    suffixes: tuple[str, ...]
    module: str


FORMATS = (
    Format("text", (".txt", ".md"), "text"),
    Format("jsonl", (".jsonl",), "jsonl"),
    Format("csv", (".csv", ".tsv"), "delimited"),
    Format("parquet", (".parquet",), "columnar"),
    Format("arrow", (".arrow",), "columnar"),
)
TEXT = FORMATS[0]


@dataclass(frozen=True)
class Kind:
    """A kind of source: the strings that select it and the module that reads it.

    A kind that names files has a module with files(src, cfg, run_dir), and its files are read
    by their format. Any other kind yields its own documents: its module has read(src, cfg,
    seed, reading), examples(src, cfg, seed) (where it gives task examples), stated_bytes(src,
    cfg) (None when unknown) and fingerprint(src, cfg, known_sources) (what identifies them
    unread).
    The strings are str.format templates over the source's fields (and formats, the names of
    its files' formats): label names it in the manifest, tally says how it was read, listing
    says what `inspect --recipes` shows.
    """

    name: str
    selects: Callable[[str], bool]
    module: str
    names_files: bool
    examples: bool = True
    label: str = "{path}"
    tally: str = "{name}: {formats}"
    listing: str = "{path}"


KINDS = (
    Kind(
        "builtin",
        lambda s: s.startswith("builtin:"),
        "builtin",
        names_files=False,
        tally="builtin",
        listing="{path} (generated)",
    ),
    Kind(
        "hf",
        lambda s: s.startswith("hf:"),
        "hub",
        names_files=False,
        label="{path} ({split})",
        tally="hf",
        listing="stream {path}",
    ),
    Kind(
        "url",
        lambda s: s.startswith(("http://", "https://")),
        "url",
        names_files=True,
        listing="download {path}",
    ),
    Kind("stdin", lambda s: s == "-", "stdin", names_files=True, examples=False),
    Kind("path", lambda s: True, "paths", names_files=True, tally="{formats}"),  # the rest
)


def kind_of(spec: str) -> Kind:
    """The kind a source string selects: the first in KINDS."""
    return next(k for k in KINDS if k.selects(spec))


def spec_kind(spec: str) -> str:
    """builtin, hf, url, stdin or path: how a source string is read."""
    return kind_of(spec).name


def kind_module(kind: Kind) -> ModuleType:
    """The module that reads sources of this kind."""
    return importlib.import_module(f"gptcli.data.{kind.module}")


def is_local(spec: str) -> bool:
    """A path on this machine without glob patterns."""
    return spec_kind(spec) == "path" and bool(spec) and not any(c in spec for c in "*?[")


def plain_name(path: Path | str) -> str:
    """A file's name in lower case without its compression suffix."""
    name = Path(path).name.lower()
    for suffix in COMPRESSIONS:
        name = name.removesuffix(suffix)
    return name


def compression(path: Path) -> str:
    """The compression suffix of a file name ('' when none)."""
    name = path.name.lower()
    return next((s for s in COMPRESSIONS if name.endswith(s)), "")


def known_format(path: Path | str) -> Format | None:
    """The format a file's name selects, or None (a directory or glob skips such files)."""
    name = plain_name(path)
    return next((f for f in FORMATS if name.endswith(f.suffixes)), None)


def format_of(path: Path | str) -> Format:
    """The format a file is read as: by its name, else text (a file named directly)."""
    return known_format(path) or TEXT


def records_format(path: Path | str) -> Format:
    """The format task examples are read as: by the file's name, else JSON lines (a .json
    file of one object per line, as many datasets name it)."""
    return known_format(path) or FORMATS[1]


def reader(fmt: Format) -> ModuleType:
    """The module that reads fmt: documents(path, reading) and records(path)."""
    return importlib.import_module(f"gptcli.data.{fmt.module}")


def listed_suffixes() -> str:
    """The suffixes a directory or glob keeps, for messages."""
    return "/".join(s for f in FORMATS for s in f.suffixes) + " (and their .gz/.zst)"
