"""Starts `python -m gptcli` processes for the tests without paying torch's import each time.

The server imports torch (and torch._dynamo, which every optimizer loads) once, then forks one
child per request; the child becomes `python -m gptcli ARGS` in the requested folder, with the
requested environment, stdin and stdout/stderr files. Reading requests from stdin, one JSON line
each, it answers with the child's pid, and writes each child's exit status to STATUS_DIR/PID once
the child ends (the negative signal number when a signal ended it, as subprocess reports it).
"""

from __future__ import annotations

import atexit
import io
import json
import os
import runpy
import select
import signal
import sys
import threading

# third-party modules that read nothing from the environment at import time (gptcli's own
# modules are imported in each child: its console reads the terminal's settings)
import numpy  # noqa: F401
import safetensors  # noqa: F401
import tokenizers  # noqa: F401
import torch  # noqa: F401
import torch._dynamo  # noqa: F401
import torch.distributed.fsdp  # noqa: F401
import typer  # noqa: F401
import yaml  # noqa: F401


def _reap(status_dir: str) -> None:
    """Write the exit status of every child that has ended."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        temp = os.path.join(status_dir, f".{pid}")
        with open(temp, "w") as f:
            f.write(str(os.waitstatus_to_exitcode(status)))
        os.replace(temp, os.path.join(status_dir, str(pid)))


def serve(status_dir: str) -> dict | None:
    """Answer requests until stdin closes (None); in a forked child, its request."""
    stdin = sys.stdin.buffer.raw  # unbuffered: a child must not inherit lines read ahead
    pending = b""
    while True:
        ready, _, _ = select.select([stdin], [], [], 0.05)
        _reap(status_dir)
        if not ready:
            continue
        chunk = os.read(stdin.fileno(), 65536)
        if not chunk:
            return None
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            request = json.loads(line)
            pid = os.fork()
            if pid == 0:
                return request
            os.write(sys.stdout.fileno(), f"{pid}\n".encode())


def become(request: dict) -> None:
    """Turn this forked child into `python -m gptcli ARGS` as the request describes it."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    stdin = os.open(request["stdin"], os.O_RDONLY)
    os.dup2(stdin, 0)
    os.close(stdin)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, fd)
        os.close(out)
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(open(0, "rb", closefd=False), encoding="utf-8")
    for fd, name, errors in ((1, "stdout", "strict"), (2, "stderr", "backslashreplace")):
        stream = io.TextIOWrapper(
            open(fd, "wb", buffering=0, closefd=False),
            encoding="utf-8",
            errors=errors,
            write_through=True,
        )
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)
    sys.path[0] = request["cwd"]  # as `python -m` puts its working folder first
    sys.argv = ["gptcli", *request["args"]]


def run_gptcli() -> int:
    """Run the entry point; the exit status Python would give it."""
    try:
        runpy.run_module("gptcli", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return (e.code or 0) & 0xFF
        print(e.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        sys.excepthook(*sys.exc_info())
        return -signal.SIGINT
    except BaseException:  # noqa: BLE001 - what Python does with an uncaught exception
        sys.excepthook(*sys.exc_info())
        return 1
    return 0


def leave(code: int) -> None:
    """Exit as Python would (threads joined, exit handlers run, killed by SIGINT after an
    uncaught KeyboardInterrupt) but without tearing down the modules one by one: with torch
    loaded that teardown takes longer than most commands."""
    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if code == -signal.SIGINT:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code)


if __name__ == "__main__":
    child = serve(sys.argv[1])
    if child is None:
        sys.exit(0)
    become(child)
    leave(run_gptcli())
