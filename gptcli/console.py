"""The one place that writes to the terminal: logs, warnings and progress go to stderr.

The core modules call these helpers instead of print() so that stdout stays clean for the
product of a command (token ids, generated text, JSON) and `--quiet` has one switch to turn.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

stderr = Console(stderr=True, highlight=False, soft_wrap=True)
stdout = Console(highlight=False, soft_wrap=True)

_quiet = False


class UserError(Exception):
    """Bad input from the user: the CLI prints the message as one line and exits 2."""


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def info(message: str) -> None:
    """A progress or status line on stderr; silenced by --quiet."""
    if not _quiet:
        stderr.print(message, markup=False)


def warn(message: str) -> None:
    """Warnings are shown even with --quiet: they tell the user something went differently."""
    stderr.print(f"warning: {message}", style="yellow", markup=False)


def out(text: str, end: str = "\n") -> None:
    """The command's product, on stdout, unformatted and flushed (pipelines read it live)."""
    sys.stdout.write(text + end)
    sys.stdout.flush()


def progress_enabled() -> bool:
    return not _quiet and sys.stderr.isatty()


class _NullProgress:
    """Stands in for rich's Progress when bars are off, so callers need no branches."""

    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def update(self, *args: Any, **kwargs: Any) -> None:
        pass

    def advance(self, *args: Any, **kwargs: Any) -> None:
        pass


@contextmanager
def progress(
    *extra_fields: str, unit: str = "items", enabled: bool = True
) -> Iterator[Progress | _NullProgress]:
    """A rich progress bar with rate and ETA on stderr, or a no-op when stderr is not a TTY
    (or enabled is False, e.g. while text streams to the same terminal).

    extra_fields are task fields shown after the bar (e.g. "loss"), filled through
    progress.update(task, loss="..."). unit="bytes" counts bytes and shows MB and MB/s.
    """
    if not enabled or not progress_enabled():
        yield _NullProgress()
        return
    counts = (
        [MofNCompleteColumn()] if unit != "bytes" else [DownloadColumn(), TransferSpeedColumn()]
    )
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        *counts,
        TaskProgressColumn(),
        *(TextColumn(f"{{task.fields[{f}]}}") for f in extra_fields),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=stderr, transient=False) as bar:
        yield bar


class Interrupted(Exception):
    """Training stopped by a signal after saving a checkpoint; carries the exit code (130/143)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Failure(Exception):
    """Something outside the user's input failed (a full disk): one line on stderr, exit 1."""
