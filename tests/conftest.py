"""Shared helpers: run the real `gptcli` entry point in a subprocess, and a small trained run."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Tests send Ctrl-C (SIGINT) to gptcli. A shell without job control starts background commands
# with SIGINT ignored, and children inherit that: the suite run as `make test &` would see every
# Ctrl-C ignored. A handler (unlike SIG_IGN) is reset to the default in each child.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture
def unreachable(monkeypatch) -> Iterator[dict[str, str]]:
    """Where the Hugging Face Hub cannot be reached, without the network: a name that does not
    resolve (.invalid never does) and a closed port on 127.0.0.1 (bound, never listening), as
    HF_ENDPOINT values by the reason the error gives; no proxy is set."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        yield {
            "does not resolve": "http://hub.invalid",
            "refused": f"http://127.0.0.1:{closed.getsockname()[1]}",
        }


def run_env(**extra: str) -> dict[str, str]:
    """The environment a test runs gptcli in: unbuffered output, no debug tracebacks."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    env.pop("GPTCLI_DEBUG", None)
    return env


def torchrun_command(nproc: int = 2) -> list[str]:
    """`torchrun --standalone --nproc_per_node NPROC -m gptcli` (gloo on CPU)."""
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*run, "--nproc_per_node", str(nproc), "-m", "gptcli"]


# Where torch.compile can be tested: the CPU when inductor has a C compiler, a CUDA GPU if any.
COMPILE_DEVICES = [
    pytest.param(
        "cpu",
        marks=pytest.mark.skipif(not shutil.which("cc"), reason="inductor needs a C compiler"),
    ),
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    ),
]

# torchrun's ranks share this machine's cores
TORCHRUN_ENV = {"OMP_NUM_THREADS": "1"}


# variables torch, OpenMP, Python or inductor read when they load: a run that sets one of these
# otherwise than the server's own environment starts a fresh interpreter
LOAD_TIME_VARIABLES = (
    "OMP_",
    "MKL_",
    "KMP_",
    "TORCH",
    "PYTORCH",
    "CUDA",
    "PYTHON",
    "LD_",
    "CC",
    "CXX",
)
# what torch writes into the test process's own environment once it compiles there (inductor's
# cache folder, OpenMP's duplicate-library switch): a fresh interpreter would see the same
SET_BY_TORCH = {"TORCHINDUCTOR_CACHE_DIR", "KMP_DUPLICATE_LIB_OK", "TORCH_WARM_POOL"}


class Server:
    """tests/gptcli_server.py, started on first use: it forks each `python -m gptcli` from an
    interpreter that has torch loaded, which saves seconds of imports per command. Still one
    process per command, with its own exit status, stdin, stdout and stderr; GPTCLI_TEST_FRESH=1
    starts a fresh interpreter for each instead."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.env: dict[str, str] = {}
        self.lock = threading.Lock()
        self.dir = Path()  # a temporary folder once the server starts
        self.count = 0

    def serves(self, env: dict[str, str]) -> bool:
        """Whether a child of the server runs as a fresh interpreter with env would."""
        if os.environ.get("GPTCLI_TEST_FRESH") == "1":
            return False
        own = self.env or run_env()
        changed = {k for k in own.keys() | env.keys() if own.get(k) != env.get(k)} - SET_BY_TORCH
        return not any(k.startswith(LOAD_TIME_VARIABLES) for k in changed)

    def start(self, args: list[str], cwd: Path, input: str | bytes | None, env: dict[str, str]):
        """Fork `gptcli ARGS`; its pid and the files for its stdout and stderr."""
        with self.lock:
            if self.proc is None:
                self.env = run_env()
                self.dir = Path(tempfile.mkdtemp(prefix="gptcli-server-"))
                server = Path(__file__).with_name("gptcli_server.py")
                self.proc = subprocess.Popen(
                    [sys.executable, str(server), str(self.dir)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    env=self.env,
                )
                atexit.register(shutil.rmtree, self.dir, True)
                atexit.register(self.proc.stdin.close)
            self.count += 1
            files = {k: self.dir / f"{self.count}.{k}" for k in ("stdin", "stdout", "stderr")}
            if isinstance(input, bytes):
                files["stdin"].write_bytes(input)
            else:
                files["stdin"].write_text(input or "")
            request = {"args": args, "cwd": str(cwd), "env": env}
            request.update({k: str(v) for k, v in files.items()})
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
            pid = int(self.proc.stdout.readline())
        return pid, files

    def run(self, args: list[str], cwd: Path, input, timeout: int, env: dict, text: bool = True):
        """Run `gptcli ARGS` to its end, as subprocess.run(capture_output=True, text=text)
        does."""
        pid, files = self.start(args, cwd, input, env)
        status = self.dir / str(pid)
        deadline = time.monotonic() + timeout
        while not status.exists():
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                while not status.exists():
                    time.sleep(0.01)
                out, err = (self.read(files[k], text) for k in ("stdout", "stderr"))
                raise subprocess.TimeoutExpired(["gptcli", *args], timeout, out, err)
            time.sleep(0.01)
        code = int(status.read_text())
        out, err = (self.read(files[k], text) for k in ("stdout", "stderr"))
        for path in [status, *files.values()]:
            path.unlink()
        return subprocess.CompletedProcess(["gptcli", *args], code, out, err)

    @staticmethod
    def read(path: Path, text: bool) -> str | bytes:
        return path.read_text() if text else path.read_bytes()


SERVER = Server()


def gptcli(
    *args: str,
    cwd: Path | None = None,
    input: str | bytes | None = None,
    timeout: int = 300,
    env: dict[str, str] | None = None,
    text: bool = True,
):
    """Run `python -m gptcli ARGS` (env: extra variables) and return the CompletedProcess, its
    output as str (bytes when not text)."""
    full_env = run_env(**(env or {}))
    if SERVER.serves(full_env):
        words = [os.fsdecode(arg) for arg in args]  # as subprocess takes paths and bytes
        folder = Path(os.path.abspath(cwd or os.getcwd()))
        return SERVER.run(words, folder, input, timeout, full_env, text)
    return subprocess.run(
        [sys.executable, "-m", "gptcli", *args],
        cwd=cwd,
        input=input,
        capture_output=True,
        text=text,
        env=full_env,
        timeout=timeout,
    )


def gptcli_without(module: str, *args: str, cwd: Path):
    """Run `gptcli ARGS` with `module` hidden, as if its optional extra were not installed (CI
    has every extra), and return the CompletedProcess."""
    code = (
        "import sys, runpy\n"
        f"sys.modules[{module!r}] = None\n"
        f"sys.argv = ['gptcli', *{list(args)!r}]\n"
        "runpy.run_module('gptcli', run_name='__main__')\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, env=run_env()
    )


def torchrun(*args: str, cwd: Path, nproc: int = 2):
    """Run `torchrun ... -m gptcli ARGS` with NPROC ranks and return the CompletedProcess."""
    return subprocess.run(
        [*torchrun_command(nproc), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=run_env(**TORCHRUN_ENV),
        timeout=300,
    )


def assert_one_line_error(proc, *needles: str) -> None:
    """Bad input: exit 2, one line on stderr, no traceback, named what was wrong."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)


TINY_RECIPE = textwrap.dedent(
    """\
    name: mini
    data:
      source: builtin:stories
      builtin_mb: 0.3
    tokenizer:
      vocab_size: 400
    model:
      n_layer: 2
      n_head: 2
      n_embd: 32
      block_size: 32
    train:
      batch_size: 4
      max_steps: 12
      warmup_steps: 2
      eval_every: 6
      eval_batches: 2
      save_every: 6
      log_every: 3
    sample:
      max_new_tokens: 20
    """
)


def write_recipe(folder: Path, text: str = TINY_RECIPE, name: str = "mini.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """A folder holding runs/mini, trained once for the whole session by the real CLI."""
    root = tmp_path_factory.mktemp("trained")
    recipe = write_recipe(root)
    proc = gptcli("pretrain", str(recipe), "--quiet", cwd=root)
    assert proc.returncode == 0, proc.stderr
    return root


# an SFT finetune of runs/mini (chat template): conftest's chat-sft run and test_finetune's
SFT = textwrap.dedent(
    """\
    name: {name}
    init: runs/mini
    task: sft
    data:
      source: {source}
      val_fraction: 0.2
    train:
      batch_size: 4
      max_steps: 4
      warmup_steps: 1
      eval_every: 2
      save_every: 0
    """
)


# a record in the messages form, with a system turn
CHAT_MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is two plus two?"},
    {"role": "assistant", "content": "Four."},
]


@pytest.fixture(scope="session")
def chat_trained(trained) -> Path:
    """runs/chat-sft next to runs/mini: a tiny SFT run (chat template), finetuned once on
    prompt/response records and one messages record."""
    source = trained / "chat-sft.jsonl"
    records = [{"prompt": f"Count to {i}.", "response": f"{i} {i + 1}"} for i in range(20)]
    records.append({"messages": CHAT_MESSAGES})
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    text = SFT.format(name="chat-sft", source=source) + "sample:\n  max_new_tokens: 8\n"
    proc = gptcli(
        "finetune", str(write_recipe(trained, text, "chat-sft.yaml")), "--quiet", cwd=trained
    )
    assert proc.returncode == 0, proc.stderr
    return trained / "runs" / "chat-sft"
