"""stderr helpers: progress bars on an 80-column terminal, one-line I/O errors."""

import errno
import re
import signal
from io import StringIO

import pytest
import torch
from rich.console import Console

from gptcli import console, files
from gptcli.console import Failure, UserError


@pytest.fixture
def terminal(monkeypatch) -> StringIO:
    """stderr as an 80-column terminal; what the bars drew, colours and cursor moves removed."""
    buf = StringIO()
    term = Console(file=buf, width=80, force_terminal=True, highlight=False, soft_wrap=True)
    monkeypatch.setattr(console, "stderr", term)
    monkeypatch.setattr(console, "progress_enabled", lambda: True)
    return buf


def _lines(buf: StringIO) -> list[str]:
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue()).replace("\r", "\n")
    return [line for line in plain.splitlines() if line.strip()]


def test_byte_progress_never_shows_more_than_the_total(terminal):
    with console.progress(unit="bytes") as bar:
        task = bar.add_task("encode (tokenizers)", total=500_000)
        bar.advance(task, 400_000)
        bar.advance(task, 100_300)  # the corpus's size on disk was an estimate
        bar.update(task, advance=10)
    last = _lines(terminal)[-1]
    assert "500.0/500.0 kB" in last and "500.3" not in last, last


def test_bars_fit_80_columns_without_cutting_what_they_say(terminal):
    with console.progress(unit="bytes") as bar:
        bar.update(bar.add_task("encode (tokenizers)", total=2_000_000_000), completed=1.5e9)
    with console.progress("loss", "lr", "rate") as bar:
        task = bar.add_task("train", total=100_000, completed=0, loss="", lr="", rate="")
        bar.update(task, completed=51_234, loss="loss 3.456", lr="lr 1.0e-03", rate="12,345 tok/s")
    lines = _lines(terminal)
    assert all(len(line) <= 80 and "…" not in line for line in lines), lines
    assert any("1.5/2.0 GB" in line for line in lines), lines
    assert any("51234/100000" in line for line in lines), lines
    assert any("loss 3.456  lr 1.0e-03  12,345 tok/s" in line for line in lines), lines


@pytest.mark.parametrize(
    "error, kind, needles",
    [
        (OSError(errno.ENOSPC, "No space left on device"), Failure, ["out.bin", "No space"]),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), Failure, ["out.bin", "quota"]),
        (Exception("I/O error: No space left on device (os error 28)"), Failure, ["os error 28"]),
        (OSError(errno.EROFS, "Read-only file system"), UserError, ["out.bin", "Read-only"]),
        (OSError(errno.EACCES, "Permission denied"), UserError, ["out.bin", "Permission"]),
    ],
)
def test_writing_turns_io_errors_into_one_line(error, kind, needles):
    with pytest.raises(kind) as caught, console.writing("out.bin"):
        raise error
    for needle in needles:
        assert needle in str(caught.value)


def test_other_errors_pass_through_writing():
    with pytest.raises(BrokenPipeError), console.writing("stdout"):
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")


def test_full_disk_while_writing_a_file_names_it(tmp_path, monkeypatch):
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    target = tmp_path / "manifest.json"
    with pytest.raises(Failure, match=f"{target}: No space left on device"):
        files.write_atomic(target, b"{}")
    assert list(tmp_path.iterdir()) == []  # no temp file left behind


def test_a_failed_allocation_is_one_line_with_the_remedy():
    """torch's CPU allocator, CUDA's out-of-memory error and MemoryError all read as the
    same short line (exit 1), the size tried where the error gives it; others pass through."""
    cpu = RuntimeError(
        "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
        "you tried to allocate 12000000000000 bytes. Error code 12 (Cannot allocate memory)"
    )
    cuda = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 ...")
    for error, size in [(cpu, " allocating 12000000000000 bytes"), (cuda, " allocating 20.00 GiB")]:
        failure = console.memory_failure(error)
        assert isinstance(failure, Failure)
        assert str(failure) == f"out of memory{size}: {console.MEMORY_REMEDY}"
    assert str(console.memory_failure(MemoryError())).startswith("out of memory: lower")
    assert console.memory_failure(RuntimeError("shape mismatch")) is None
    assert console.memory_failure(ValueError("out of memory")) is None


def raise_terminated(signum: int, frame: object) -> None:
    raise console.Terminated()


@pytest.fixture
def sigterm_raises():
    """SIGTERM raising Terminated, as the CLI sets it up; the test runner's handler after."""
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    yield
    signal.signal(signal.SIGTERM, previous)


def test_held_signals_pass_a_signal_on_between_calls_not_inside_them(sigterm_raises):
    with console.held_signals() as check:
        signal.raise_signal(signal.SIGTERM)  # as if inside a C call: only noted
        check_reached = True
        with pytest.raises(console.Terminated):
            check()
        signal.raise_signal(signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            check()
    assert check_reached and signal.getsignal(signal.SIGTERM) is raise_terminated
    # a signal the C code turned into another error still ends the block as the signal
    with pytest.raises(console.Terminated), console.held_signals():
        signal.raise_signal(signal.SIGTERM)
        raise ValueError("could not determine the shape of object type 'UntypedStorage'")
    with console.held_signals() as check:  # nothing noted: nothing raised
        check()
