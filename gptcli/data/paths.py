"""Path sources: a file, a directory (recursively) or a glob on this machine."""

from __future__ import annotations

import glob
import os
from pathlib import Path

from gptcli.console import UserError
from gptcli.data import registry
from gptcli.recipe import DataConfig, SourceConfig


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


def files(src: SourceConfig, cfg: DataConfig, run_dir: Path | None) -> list[Path]:
    return source_files(src.path)
