"""Shared helpers: run the real `gptcli` entry point in a subprocess or in this process, and a
small trained run."""

from __future__ import annotations

import atexit
import io
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
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from gptcli import cli, console, memory

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


# `make test` runs the suite on two workers, a test file each at a time, in this order: the
# files that take longest first, so that none is left to run alone at the end.
SLOW_FILES_FIRST = (
    "test_readme.py",
    "test_parallel.py",
    "test_train.py",
    "test_finetune.py",
    "test_loggers.py",
    "test_data_cli.py",
    "test_wheel.py",
    "test_memory.py",
    "test_autotune.py",
    "test_serve.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    first = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: first.get(item.path.name, len(first)))  # stable: files stay whole


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


REGISTER = atexit.register


class CommandState:
    """What a command run in this process may change and a fresh process would not keep: the
    Ctrl-C and SIGTERM handlers (cli.main installs its own), the exit handlers gptcli
    registers, torch's thread count and random state, console's quiet flag and memory's
    inference check (--no-memory-check). Taken before a command, put back after it."""

    def __init__(self) -> None:
        self.handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        self.threads = torch.get_num_threads()
        self.rng = torch.get_rng_state()
        self.exit_handlers: list[Callable] = []

    def register(self, func: Callable, *args, **kwargs) -> Callable:
        """atexit.register while the command runs: gptcli's own handlers are noted to drop."""
        if getattr(func, "__module__", "").startswith("gptcli"):
            self.exit_handlers.append(func)
        return REGISTER(func, *args, **kwargs)

    def restore(self) -> None:
        for sig, handler in self.handlers.items():
            signal.signal(sig, handler)
        for func in self.exit_handlers:
            atexit.unregister(func)
        torch.set_num_threads(self.threads)
        torch.set_rng_state(self.rng)
        console.set_quiet(False)
        memory.set_inference_check(True)


@contextmanager
def warnings_on_stderr() -> Iterator[None]:
    """Python's warnings as a fresh `python -m gptcli` shows them, on sys.stderr (pytest would
    otherwise collect them into its summary, and a test counting stderr lines would miss
    them): each once per place, deprecations and import or resource warnings ignored."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        for quiet in (
            DeprecationWarning,
            PendingDeprecationWarning,
            ImportWarning,
            ResourceWarning,
        ):
            warnings.filterwarnings("ignore", category=quiet)
        warnings.showwarning = show
        yield


def run_in_process(
    monkeypatch: pytest.MonkeyPatch,
    *args: str,
    cwd: Path | None = None,
    input: str | bytes | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run `gptcli ARGS` through cli.main in this process, as `gptcli(...)` runs it in a child:
    same working folder, environment, stdin, exit status and output (utf-8 text)."""
    stdin = input.encode() if isinstance(input, str) else (input or b"")
    out, err = io.BytesIO(), io.BytesIO()
    state = CommandState()
    with monkeypatch.context() as patch:
        if cwd is not None:
            patch.chdir(cwd)
        patch.delenv("GPTCLI_DEBUG", raising=False)
        for key, value in (env or {}).items():
            patch.setenv(key, value)
        patch.setattr(atexit, "register", state.register)
        patch.setattr(sys, "argv", ["gptcli", *(os.fsdecode(a) for a in args)])
        patch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
        streams = {"stdout": (out, "strict"), "stderr": (err, "backslashreplace")}
        for name, (buffer, errors) in streams.items():
            wrapper = io.TextIOWrapper(buffer, encoding="utf-8", errors=errors, write_through=True)
            patch.setattr(sys, name, wrapper)
        try:
            with warnings_on_stderr():
                cli.main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        finally:
            state.restore()
        # read before the patches go: a dropped wrapper closes its buffer
        stdout, stderr = out.getvalue().decode(), err.getvalue().decode()
    return subprocess.CompletedProcess(["gptcli", *args], code, stdout, stderr)


@pytest.fixture
def gptcli_inproc(monkeypatch) -> Callable[..., subprocess.CompletedProcess]:
    """`gptcli(...)` without a process: for commands that stop on bad input before any real
    work, where starting a child costs more than the command. Each call leaves this process as
    it found it (folder, environment, streams, signal handlers, threads, quiet flag, memory
    check); signals, real stdio, torchrun and training keep the subprocess `gptcli`."""

    def run(*args: str, **kwargs) -> subprocess.CompletedProcess:
        return run_in_process(monkeypatch, *args, **kwargs)

    return run


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


# gptcli with the save of one step held, so that a test can kill -9 it at a known point of a
# save: `python hold.py MARKER STEP WHEN ARGS...` runs `gptcli ARGS`; every process (each rank
# under torchrun) writes its pid to MARKER.pidRANK, and the one that reaches the save of STEP
# writes the temporary folder's path to MARKER and sleeps, WHEN "before" the checkpoint's files
# are written into that folder or "after" (all written, not yet renamed into place).
HOLD_IN_SAVE = textwrap.dedent(
    """\
    import os, runpy, sys, time
    from pathlib import Path
    from gptcli import checkpoint_tensors

    marker, hold_step, when = Path(sys.argv.pop(1)), int(sys.argv.pop(1)), sys.argv.pop(1)
    Path(f"{marker}.pid{os.environ.get('RANK', '0')}").write_text(str(os.getpid()))
    write_main_files = checkpoint_tensors.write_main_files

    def hold(tmp):
        marker.write_text(str(tmp))
        time.sleep(300)

    def held(tmp, snapshot, *args, **kwargs):
        if snapshot.step == hold_step and when == "before":
            hold(tmp)
        write_main_files(tmp, snapshot, *args, **kwargs)
        if snapshot.step == hold_step and when == "after":
            hold(tmp)

    checkpoint_tensors.write_main_files = held
    runpy.run_module("gptcli", run_name="__main__")
    """
)


def wait_for_hold(proc: subprocess.Popen, marker: Path, timeout: float = 120) -> Path:
    """Wait until the process started with HOLD_IN_SAVE is held in its save; the temporary
    folder it is writing (as the command named it, relative to its working folder)."""
    deadline = time.monotonic() + timeout
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if not marker.exists():
        why = proc.stderr.read() if proc.stderr and proc.poll() is not None else "no save held"
        raise AssertionError(why)
    return Path(marker.read_text())


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


# a bounded JSON Schema (nested objects, maxLength strings, a maxItems array, enums, bounded
# integers, required keys) for structured output: its longest output, even spelled byte by
# byte, fits in SCHEMA_BUDGET new tokens, so a constrained sample always completes in it
BOUNDED_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "mood": {"enum": ["happy", "sad", "calm"]},
        "pet": {
            "type": "object",
            "properties": {
                "kind": {"enum": ["cat", "dog"]},
                "legs": {"type": "integer", "minimum": 0, "maximum": 4},
            },
            "required": ["kind", "legs"],
            "additionalProperties": False,
        },
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 3},
        "ok": {"type": "boolean"},
    },
    "required": ["name", "age", "mood", "pet", "tags"],
    "additionalProperties": False,
}
SCHEMA_BUDGET = 160


def write_recipe(folder: Path, text: str = TINY_RECIPE, name: str = "mini.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def files_of(folder: Path) -> dict[str, tuple[int, int]]:
    """Each file under folder (but the run lock, which every command opens) by its path: its
    size and modification time."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file() and p.name != ".lock"
    }


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """A folder holding runs/mini, trained once for the whole session by the real CLI. Tests
    share it, so none may write into runs/mini (a test that does takes `trained_copy`): the
    session ends with an error naming what changed there."""
    root = tmp_path_factory.mktemp("trained")
    recipe = write_recipe(root)
    proc = gptcli("pretrain", str(recipe), "--quiet", cwd=root)
    assert proc.returncode == 0, proc.stderr
    before = files_of(root / "runs" / "mini")
    yield root
    after = files_of(root / "runs" / "mini")
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"a test wrote into the shared runs/mini: {changed}"


@pytest.fixture
def trained_copy(trained, tmp_path) -> Path:
    """tmp_path holding a copy of the trained runs/mini and its mini.yaml, for a test that
    writes into the run (checkpoints, eval results, exports)."""
    shutil.copytree(trained / "runs" / "mini", tmp_path / "runs" / "mini")
    shutil.copy(trained / "mini.yaml", tmp_path / "mini.yaml")
    return tmp_path


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


@pytest.fixture
def tiny_run(tmp_path):
    """A run folder with a tokenizer, and a one-layer model and AdamW a step into training:
    (folder, model, optimizer), ready for save_tiny."""
    from gptcli import tokenizer
    from gptcli.model import GPT
    from gptcli.recipe import ModelConfig

    tok = tokenizer.train(["hello world"] * 10, 280, ["<|endoftext|>"])
    tokenizer.save(tok, tmp_path / "tokenizer.json")
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=280))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.long))[1].backward()
    opt.step()
    return tmp_path, model, opt


def save_tiny(run, step: int) -> Path:
    """tiny_run's model and optimizer saved as the run's checkpoint of step."""
    from gptcli.checkpoint_tensors import Snapshot, save

    folder, model, opt = run
    snapshot = Snapshot(
        step, model.cfg, model.state_dict(), folder / "tokenizer.json", [opt], {"tokens_seen": step}
    )
    return save(folder, snapshot)


# the Llama family's switches (the other family HF and GGUF express is GPT-2, the default)
LLAMA = {"positions": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False}


def small_checkpoint(root: Path, name: str, tok_path: Path, **switches) -> Path:
    """A small checkpoint of any architecture, with weights far from init (not all-zero biases)."""
    from gptcli import tokenizer
    from gptcli.checkpoint_tensors import Snapshot, save
    from gptcli.model import GPT
    from gptcli.recipe import ModelConfig

    torch.manual_seed(0)
    vocab = tokenizer.load(tok_path).get_vocab_size()
    model = GPT(
        ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=vocab, **switches)
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    snapshot = Snapshot(1, model.cfg, model.state_dict(), tok_path, state={"step": 1})
    return save(root / "runs" / name, snapshot)


@pytest.fixture(scope="session")
def format_models(trained, tmp_path_factory) -> dict[str, Path]:
    """runs/mini (trained, GPT-2 family) plus Llama-family checkpoints sharing its tokenizer,
    for the HF and GGUF formats' tests."""
    tok_path = trained / "runs" / "mini" / "tokenizer.json"
    root = tmp_path_factory.mktemp("export")
    return {
        "gpt2": trained / "runs" / "mini",
        "gpt2-nobias-untied": small_checkpoint(
            root, "g", tok_path, bias=False, tie_embeddings=False
        ),
        "llama": small_checkpoint(root, "l", tok_path, **LLAMA),
        "llama-bias-untied": small_checkpoint(
            root, "lb", tok_path, **{**LLAMA, "bias": True}, tie_embeddings=False
        ),
        "root": root,
    }


def loaded_by_import(module: str, *watched: str) -> list[str]:
    """Which of the watched modules a fresh Python has loaded once it imports module."""
    found = f"[m for m in {watched!r} if m in sys.modules]"
    code = f"import json, sys, {module}\nprint(json.dumps({found}))"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=run_env()
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)
