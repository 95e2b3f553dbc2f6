"""The one place that writes to the terminal: logs, warnings and progress go to stderr.

The core modules call these helpers instead of print() so that stdout stays clean for the
product of a command (token ids, generated text, JSON) and `--quiet` has one switch to turn.
"""

from __future__ import annotations

import errno
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

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
    with writing("stdout"):
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


class _Progress(Progress):
    """Rich's Progress that never shows more done than the total (a corpus's size on disk is an
    estimate of the bytes read), with the task's extra fields on a line of their own so the
    bar's line stays within 80 columns."""

    def __init__(self, *columns: Any, fields: tuple[str, ...], **kwargs: Any) -> None:
        super().__init__(*columns, **kwargs)
        self.fields = fields

    def _capped(self, task_id: TaskID, completed: float, total: float | None = None) -> float:
        task = next(t for t in self.tasks if t.id == task_id)
        total = task.total if total is None else total
        return completed if total is None else max(0.0, min(completed, total))

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        task = next(t for t in self.tasks if t.id == task_id)
        super().advance(task_id, self._capped(task_id, task.completed + advance) - task.completed)

    def update(
        self,
        task_id: TaskID,
        *,
        total: float | None = None,
        completed: float | None = None,
        advance: float | None = None,
        **kwargs: Any,
    ) -> None:
        if advance is not None:
            task = next(t for t in self.tasks if t.id == task_id)
            completed = (task.completed if completed is None else completed) + advance
        if completed is not None:
            completed = self._capped(task_id, completed, total)
        super().update(task_id, total=total, completed=completed, **kwargs)

    def get_renderables(self) -> Iterable[RenderableType]:
        yield from super().get_renderables()
        for task in self.tasks:
            shown = [str(task.fields.get(f, "")) for f in self.fields]
            if task.visible and any(shown):
                yield Text("  " + "  ".join(s for s in shown if s), no_wrap=False)


@contextmanager
def progress(
    *extra_fields: str, unit: str = "items", enabled: bool = True
) -> Iterator[Progress | _NullProgress]:
    """A rich progress bar with rate and ETA on stderr, or a no-op when stderr is not a TTY
    (or enabled is False, e.g. while text streams to the same terminal).

    extra_fields are task fields shown on a line below the bar (e.g. "loss"), filled through
    progress.update(task, loss="..."). unit="bytes" counts bytes and shows MB and MB/s.
    """
    if not enabled or not progress_enabled():
        yield _NullProgress()
        return
    if unit == "bytes":  # the sizes say how far it is: no percentage, no elapsed time
        counts: list = [DownloadColumn(), TransferSpeedColumn()]
    else:
        counts = [MofNCompleteColumn(), TaskProgressColumn(), TimeElapsedColumn()]
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=20),
        *counts,
        TextColumn("eta"),
        TimeRemainingColumn(),
    ]
    with _Progress(*columns, fields=extra_fields, console=stderr, transient=False) as bar:
        yield bar


class Interrupted(Exception):
    """Training stopped by a signal after saving a checkpoint; carries the exit code (130/143)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Failure(Exception):
    """Something outside the user's input failed (a full disk): one line on stderr, exit 1."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised wherever the program is as Ctrl-C raises KeyboardInterrupt: exit 143."""

    code = 143


@contextmanager
def held_signals() -> Iterator[Callable[[], None]]:
    """SIGINT and SIGTERM only noted inside the block; the check it yields, called between
    calls into C code, and the block's end pass a noted one on to the handler held back (which
    raises KeyboardInterrupt or Terminated). For C code that calls back into Python, as
    safetensors does to build each tensor: a handler raising there comes out as another error
    ("could not determine the shape ..."), and the signal is lost. Off the main thread, or
    where a signal has no Python handler, nothing is held."""
    noted: list[int] = []
    held: dict[int, Callable] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            handler = signal.getsignal(sig)
            if callable(handler):
                held[sig] = handler
                signal.signal(sig, lambda signum, frame: noted.append(signum))

    def check() -> None:
        if noted:
            signum = noted[0]
            noted.clear()
            held[signum](signum, None)

    try:
        yield check
    finally:
        for sig, handler in held.items():
            signal.signal(sig, handler)
        check()  # also when the block failed: the signal is what the user sees


# errno values that mean the disk (or the user's quota) is full: exit 1, nothing to fix in input
DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# errno values that mean the path itself is wrong: not writable, not there, not a folder
BAD_PATH = {
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOENT,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EEXIST,
    errno.ENAMETOOLONG,
    errno.ELOOP,
}


def os_errno(e: BaseException) -> int | None:
    """The errno of an OSError, or of a Rust library's I/O error ("... (os error 28)")."""
    if isinstance(e, OSError):
        return e.errno
    found = re.search(r"\(os error (\d+)\)", str(e))
    return int(found.group(1)) if found else None


def io_failure(
    e: BaseException, path: str | Path | None = None, doing: str = ""
) -> Exception | None:
    """The one-line error for a failed read or write of path (e.g. doing="cannot write"):
    Failure (exit 1) for a full disk, UserError (exit 2) for a path that cannot be used;
    None for any other error (or a bad path that is not named)."""
    code = os_errno(e)
    if path is None:
        path = getattr(e, "filename", None)
    where = f"{doing} {path}".strip() + ": " if path else ""
    cause = getattr(e, "strerror", None) or str(e)
    if code == errno.EEXIST:
        cause = "a file stands where a folder is needed"
    if code in DISK_FULL:
        return Failure(f"{where}{cause} (free some space and run the command again)")
    if code in BAD_PATH and path:
        return UserError(f"{where}{cause} (check the path and its permissions)")
    return None


# what an allocation that failed says: torch's CPU allocator, CUDA's, the MPS backend's
OUT_OF_MEMORY = ("can't allocate memory", "not enough memory", "out of memory")
MEMORY_REMEDY = (
    "lower train.batch_size or the rows at a time (--num-samples, --batch-size), set "
    "train.activation_checkpointing: true, use a smaller model, or free memory"
)


def memory_failure(e: BaseException) -> Failure | None:
    """The one-line error (exit 1) for an allocation that failed despite the estimate checked
    before (MemoryError, torch's OutOfMemoryError, "can't allocate memory"), with the remedy;
    None for any other error."""
    names = {cls.__name__ for cls in type(e).__mro__}
    text = str(e)
    said = isinstance(e, RuntimeError) and any(s in text.lower() for s in OUT_OF_MEMORY)
    if not (isinstance(e, MemoryError) or "OutOfMemoryError" in names or said):
        return None
    size = re.search(r"[Tt]ried to allocate ([\d.]+ ?[A-Za-z]+)", text)
    return Failure(
        f"out of memory{' allocating ' + size.group(1) if size else ''}: {MEMORY_REMEDY}"
    )


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Report a failed write to path in one line that names it (see io_failure)."""
    try:
        yield
    except (UserError, Failure):
        raise
    except Exception as e:
        failure = io_failure(e, path, "cannot write")
        if failure is None:
            raise
        raise failure from None
