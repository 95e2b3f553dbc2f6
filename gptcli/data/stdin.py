"""The stdin source (-): spooled once into the run folder, then read as a text file."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from gptcli import console
from gptcli.console import UserError
from gptcli.data.streams import READ_CHUNK
from gptcli.recipe import DataConfig, SourceConfig

STDIN_FILE = "stdin.txt"


def path(run_dir: Path | None) -> Path:
    """Where stdin was spooled for this run."""
    if run_dir is None:
        raise UserError("data.source '-' (stdin) needs a run folder to spool it into")
    return run_dir / "data" / STDIN_FILE


def files(src: SourceConfig, cfg: DataConfig, run_dir: Path | None) -> list[Path]:
    """The spooled copy, read as a text file."""
    return [path(run_dir)]


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
