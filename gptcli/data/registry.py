"""What kind a data source is, decided in one place: the string's form, then the file's name.

A source string is builtin:NAME, hf:OWNER/NAME (a Hub dataset), an http(s) URL, - (stdin) or a
path (a file, directory or glob). The files a source names are read by the format their name
gives (after a .gz or .zst compression suffix); a new format is one reader module and one line
in FORMATS.
"""

from __future__ import annotations

import importlib
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


def spec_kind(spec: str) -> str:
    """builtin, hf, url, stdin or path: how a source string is read."""
    if spec.startswith("builtin:"):
        return "builtin"
    if spec.startswith("hf:"):
        return "hf"
    if spec.startswith(("http://", "https://")):
        return "url"
    if spec == "-":
        return "stdin"
    return "path"


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
