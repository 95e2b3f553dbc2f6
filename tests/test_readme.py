"""Every command line and snippet in README.md's code blocks runs as written, and prints what the
README shows.

What is read: every fenced block (also an indented one). In a `sh`/`bash` block each line is a
command (a line ending in `\\` or inside an open quote goes on with the next); in a block with
`$ ` lines, each `$ ` line is a command and the lines after it, up to the next one, are what it
prints; a `python` block is one command (`python -` with the block on stdin), and its
`# printed:` comment lines are what it prints; a `yaml` block must load as a recipe. A command
given twice is run once.

How it runs: in README order in one temp folder (later lines use the runs earlier ones made), two
at a time where they do not depend on each other, with `gptcli` (this checkout) and the test's
Python environment on PATH. Rewriting, the only changes made to a line:
- a line that trains gets smaller sizes through `--set` (after the recipe, so the line's own
  `--set`s still win), and `../shared/data` holds small stand-ins;
- `runs/mini`, the test suite's 2-layer model the README's outputs come from, is `runs/tiny`;
- `127.0.0.1:8000` (the clients' server) is the free port of the one `gptcli serve -c runs/sft`
  the test runs, as the Serve section says: started by the README's line that serves runs/sft
  (or before the first client line), kept for every client line, stopped (exit 0) at the end;
- another server the README starts (`gptcli serve`, `tensorboard`, `mlflow ui`) gets a free port
  (`--port`), is checked to answer HTTP, then stopped with SIGTERM (`gptcli serve`: exit 0);
- `gptcli chat` without piped stdin runs on a pseudo-terminal: the test types the `> ` lines the
  README shows (`^D`: end of input), or just ends the input.
A line whose comment says `needs: ...` (the network, a GPU, several machines, a package the
extras do not install) is only parsed:
a gptcli command, its flags and its recipe's keys; torchrun's own flags; `make`'s target; any
other program must be installed. Placeholders in such a line (RECIPE, NAME, N, G, HOST:PORT) stand
for the tiny recipe, a run name, 2 and a local address.

Masking rule for printed output (the README shows one real run; the test's run is another, at
smoke size): numbers (timings, losses, counts, ids, dates), commit hashes (with or without
`-dirty`), quoted strings ('...', "..."), the values of JSON keys `id`, `created`, `content` and
`text`, finish reasons (`stop`, `length`, `eos`), the rows of a text chart (a `|` and its points,
labelled or not) and the model's own text (a chat reply; a line a Python snippet prints that is
not a Python value's repr, which may span lines) match any such value; runs of spaces match any
run of spaces. Kept exactly: every other character, the JSON keys and their order, the lines and
their order. A line `...` (or one starting so) matches any lines; `...` inside a line matches any
text. A line (or pair of lines) shown several times in a row matches one or more such lines, as
the number of sampled tokens (or chart rows) differs. A line ending in `(stderr)` is looked for
on stderr; blank lines at the end do not count.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import pexpect
import pytest
from conftest import REPO, run_env

README = REPO / "README.md"
NEEDS = re.compile(r"#.*\bneeds:\s*([\w, -]+)")

# smaller sizes for lines that train, by recipe; the same for every line of a recipe, so a later
# line finds the run an earlier one made up to date
TINY_MODEL = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32"]
FEW_STEPS = ["train.batch_size=2", "train.max_steps=2", "train.warmup_steps=1"]
FEW_STEPS += ["train.eval_batches=1", "train.log_every=1"]
SMOKE = {
    "recipes/tiny.yaml": [
        "data.builtin_mb=0.2",
        "tokenizer.vocab_size=300",
        "sample.max_new_tokens=8",
    ]
    + TINY_MODEL
    + FEW_STEPS,
    "recipes/sst2-pretrain.yaml": ["tokenizer.vocab_size=300", *TINY_MODEL, *FEW_STEPS],
    "recipes/finetune-lm.yaml": FEW_STEPS,
    "recipes/finetune/sft.yaml": FEW_STEPS,
    "recipes/finetune/sst2.yaml": FEW_STEPS,
    "recipes/finetune/rte.yaml": FEW_STEPS,
}
SMOKE["tiny"] = SMOKE["recipes/tiny.yaml"]  # the bundled recipe by name
TRAINS = re.compile(r"gptcli (?:tokenize|pretrain|finetune) ([^\s-]\S*)")  # the RECIPE
OUT = re.compile(r"--out\s+(\S+)")  # a folder a line writes
CLASSIFIER_LINE = re.compile(r"sst2-pretrain|finetune/(sst2|rte)|runs/(sst2|rte)")
SERVER_LINE = re.compile(r"^(gptcli serve|tensorboard|mlflow ui)\b")
CLIENT_ADDRESS = "127.0.0.1:8000"
CLIENTS_SERVER = "gptcli serve -c runs/sft"
PLACEHOLDERS = {"RECIPE": "tiny", "NAME": "tiny", "HOST:PORT": "127.0.0.1:29500", "N": "2"}
PLACEHOLDERS["G"] = "2"
# a file the README shows and later lines read: "... `NAME.json`:", a blank line, a json block
README_JSON_FILES = re.compile(r"`([\w.-]+\.json)`:\n\n```json\n(.*?)\n```", re.S)


@dataclass
class Command:
    """One command of the README as bash runs it, and the output the README shows for it."""

    text: str
    shown: list[str] = field(default_factory=list)
    model_text: set[int] = field(default_factory=set)  # shown lines that are the model's text


def readme_blocks() -> list[tuple[str, list[str]]]:
    """The fenced blocks of README.md: (language, lines without the block's indent)."""
    blocks, current, lang, indent = [], None, "", 0
    for raw in README.read_text().splitlines():
        fence = re.match(r"^(\s*)```(\w*)\s*$", raw)
        if fence and current is None:
            current, lang, indent = [], fence[2], len(fence[1])
        elif fence and current is not None:
            blocks.append((lang, current))
            current = None
        elif current is not None:
            current.append(raw[indent:] if not raw[:indent].strip() else raw.strip())
    return blocks


def _complete(text: str) -> bool:
    """Whether a command's text ends where a shell would end it (no open quote or `\\`)."""
    if text.endswith("\\"):
        return False
    try:
        shlex.split(text, comments=True)
    except ValueError:
        return False
    return True


def _shell_commands(lines: list[str]) -> list[Command]:
    """A block's commands; with `$ ` lines, each with the lines it prints after it."""
    sessions = any(line.startswith("$ ") for line in lines)
    commands: list[Command] = []
    pending: list[str] = []
    for line in lines:
        if pending:
            pending.append(line)
        elif sessions and line.startswith("$ "):
            pending = [line[2:]]
        elif sessions and commands:
            commands[-1].shown.append(line)
            continue
        elif not sessions and line.strip() and not line.lstrip().startswith("#"):
            pending = [line.strip()]
        else:
            continue
        if _complete("\n".join(pending)):
            commands.append(Command("\n".join(pending)))
            pending = []
    for command in commands:
        typed = any(s.startswith("> ") for s in command.shown)
        if command.text.startswith("gptcli chat") and typed:  # a reply: any lines of text
            reply = [i for i, s in enumerate(command.shown) if not s.startswith(("> ", "chat"))]
            command.model_text = set(reply)
    return commands


PYTHON_VALUE = re.compile(r"^\s*('|\"|\.\.\.|[A-Z]\w*\(|None\b|-?\d)")


def _python_command(lines: list[str]) -> Command:
    """A python block run as `python -`; its `# printed:` comments are what it prints."""
    code = "\n".join(lines)
    command = Command(f"python - <<'PY'\n{code}\nPY")
    if "# printed:" in lines:
        printed = lines[lines.index("# printed:") + 1 :]
        command.shown = [re.sub(r"^# ?", "", line) for line in printed]
        command.model_text = {i for i, s in enumerate(command.shown) if not PYTHON_VALUE.match(s)}
    return command


def readme_commands() -> list[Command]:
    """The commands of README code blocks, in order; a command given twice (with other
    comments) once."""
    commands: list[Command] = []
    seen: dict[str, Command] = {}
    for lang, lines in readme_blocks():
        if lang == "python":
            found = [_python_command(lines)]
        elif lang in ("sh", "bash") or (lang == "text" and any(s[:2] == "$ " for s in lines)):
            found = _shell_commands(lines)
        else:
            continue
        for command in found:
            text = command.text.replace("runs/mini", "runs/tiny")
            try:
                key = shlex.join(shlex.split(text, comments=True))
            except ValueError:
                key = text
            if key not in seen:
                seen[key] = command
                commands.append(command)
            elif command.shown:  # the output shown for a command run earlier
                seen[key].shown, seen[key].model_text = command.shown, command.model_text
    return commands


def readme_lines() -> list[str]:
    return [command.text for command in readme_commands()]


def _smoke(line: str) -> str:
    """The line with its recipe's smaller sizes set right after the recipe, and runs/mini (the
    test suite's model the README's outputs come from) as runs/tiny."""
    for recipe in TRAINS.findall(line):
        assert recipe in SMOKE, f"{recipe}: add smaller sizes to SMOKE for: {line}"
        sets = " ".join(f"--set {s}" for s in SMOKE[recipe])
        line = re.sub(rf"(?<=\s){re.escape(recipe)}(?=\s|$)", f"{recipe} {sets}", line, count=1)
    return line.replace("runs/mini", "runs/tiny")


def _gptcli_args(line: str) -> list[str]:
    """The arguments of the line's gptcli command: no pipe, redirections, comment or torchrun."""
    words = shlex.split(line, comments=True)
    if "-m" in words and words[words.index("-m") + 1] == "gptcli":  # torchrun ... -m gptcli
        words = words[words.index("-m") + 1 :]
    else:
        segment = next(s for s in line.split("|") if s.strip().startswith("gptcli "))
        words = shlex.split(segment, comments=True)
    args, rest = [], iter(words[1:])
    for word in rest:
        if word in ("<", ">"):
            next(rest)  # the file redirected from or to
        else:
            args.append(word)
    return args


def _usage_error() -> type[Exception]:
    """Click's UsageError as the installed Typer raises it (newer Typers vendor Click under a
    module of their own)."""
    import importlib

    import typer.main

    from gptcli import cli

    group = type(typer.main.get_command(cli.app))
    core = next(c for c in group.__mro__ if c.__name__ == "Command").__module__
    return importlib.import_module(core.rsplit(".", 1)[0] + ".exceptions").UsageError


def _parse_gptcli(line: str, cwd: Path) -> None:
    """Check a gptcli line that is not run: a known command, known flags, a recipe with known
    keys. Raises Click's UsageError for an unknown command or flag, UserError for a bad recipe."""
    import click
    import typer.main

    from gptcli import bundled, cli
    from gptcli import recipe as recipe_mod

    args = _gptcli_args(line)
    group = typer.main.get_command(cli.app)
    command = group.get_command(click.Context(group), args[0])
    if command is None:
        raise _usage_error()(f"no such command {args[0]!r} in: {line}")
    ctx = command.make_context(args[0], args[1:])
    if "recipe_path" in ctx.params:
        path = cwd / ctx.params["recipe_path"]
        if not path.exists():  # a bundled recipe by name
            path = bundled.find(ctx.params["recipe_path"]) or path
        recipe_mod.load(path, ctx.params.get("sets") or [])


def _parse(line: str, cwd: Path) -> None:
    """Check a line that is not run (see the module's docstring)."""
    for placeholder, value in PLACEHOLDERS.items():
        line = re.sub(rf"\b{re.escape(placeholder)}\b", value, line)
    words = shlex.split(line, comments=True)
    if words[0] == "torchrun":
        from torch.distributed.run import get_args_parser

        get_args_parser().parse_args(words[1:])  # exits (SystemExit) on an unknown flag
    if "gptcli" in words:
        _parse_gptcli(line, cwd)
    elif words[0] == "make":
        make = ["make", "-n", "-C", str(REPO), *words[1:]]
        assert subprocess.run(make, capture_output=True).returncode == 0, line
    else:
        assert shutil.which(words[0], path=_env(cwd)["PATH"]), f"not installed: {line}"


def _jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _workspace(root: Path) -> Path:
    """A copy of recipes/, stand-ins for ../shared/data, the files the lines read, and a
    `gptcli` on PATH that runs this checkout."""
    work = root / "work"
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "recipes", work / "recipes")
    stories = "".join(
        f"Once upon a time, cat {i} found a red ball.<|endoftext|>" for i in range(150)
    )
    data = root / "shared" / "data"
    (data / "tinystories").mkdir(parents=True)
    (data / "tinystories" / "TinyStories-train.head.txt").write_text(stories)
    (data / "tinyshakespeare.txt").write_text("First Citizen:\nSpeak, speak.\n\n" * 40)
    words = ["a witty film", "a dull mess", "warm and funny", "long and boring"]
    sst2 = [{"text": f"{words[i % 4]} {i}", "label": (i % 4) in (0, 2)} for i in range(120)]
    sst2 = [{**r, "label": int(r["label"])} for r in sst2]
    _jsonl(data / "classify" / "sst2_train.jsonl", sst2)
    _jsonl(data / "classify" / "sst2_dev.jsonl", sst2[:8])
    labels = ["entailment", "not_entailment"]
    rte = [
        {"premise": f"the cat {i} sat", "hypothesis": "a cat sat", "label": labels[i % 2]}
        for i in range(40)
    ]
    _jsonl(data / "classify" / "rte_train.jsonl", rte)
    _jsonl(data / "classify" / "rte_dev.jsonl", rte[:6])
    sft = [{"prompt": f"Count to {i}.", "response": f"{i} {i + 1}"} for i in range(20)]
    _jsonl(data / "instruct" / "gsm8k_train.jsonl", sft)
    _jsonl(data / "instruct" / "gsm8k_test.jsonl", sft[:4])
    (work / "notes.txt").write_text("Once upon a time\nThe end\n")
    (work / "p.txt").write_text("Once upon a time")
    (work / "prompts.txt").write_text("Once upon a time\nOne day\n")
    (work / "held-out.txt").write_text(stories[:2000])
    for name, text in README_JSON_FILES.findall(README.read_text()):
        (work / name).write_text(text + "\n")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    (bin_dir / "gptcli").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m gptcli "$@"\n')
    (bin_dir / "gptcli").chmod(0o755)
    return work


def _env(work: Path) -> dict[str, str]:
    """gptcli and the test's environment (python, torchrun, tensorboard, ...) first on PATH;
    the usual cache: no line downloads, and the CPU's peak FLOP/s is there; one thread, as two
    lines run side by side on the machine's cores."""
    env = run_env(OMP_NUM_THREADS="1")
    path = [str(work.parent / "bin"), str(Path(sys.executable).parent), env["PATH"]]
    env["PATH"] = os.pathsep.join(path)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str, proc: subprocess.Popen, timeout: float = 120, ready: bool = False) -> bool:
    """Whether the server answers url (any HTTP status; ready: 200) before it exits or the
    timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(url, timeout=5).close()
            return True
        except urllib.error.HTTPError:
            if not ready:
                return True
            time.sleep(0.3)
        except OSError:
            time.sleep(0.3)
    return False


class Server:
    """A server a line starts (or the clients' one): on a free port, in its own process group."""

    def __init__(self, line: str, work: Path) -> None:
        self.port = _free_port()
        if "--port" in line:
            line = re.sub(r"--port \d+", f"--port {self.port}", line)
        else:
            line = re.sub(r"(\s+#.*)?$", f" --port {self.port}", line, count=1)
        self.line = line
        self.proc = subprocess.Popen(
            ["bash", "-c", f"exec {line}"],
            cwd=work,
            env=_env(work),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        ours = line.startswith("gptcli serve")  # it answers before its model has loaded
        path = "/health" if ours else "/"
        self.answered = _answers(f"http://127.0.0.1:{self.port}{path}", self.proc, ready=ours)

    def stop(self) -> tuple[int, str]:
        """SIGTERM; the exit status and the server's output."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            out, _ = self.proc.communicate()
        return self.proc.returncode, out


class ClientsServer:
    """`gptcli serve -c runs/sft`, started on the first client line of a workspace."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.servers: dict[Path, Server] = {}

    def port(self, work: Path) -> int:
        with self.lock:
            if work not in self.servers:
                self.servers[work] = Server(f"{CLIENTS_SERVER} --port 8000", work)
            server = self.servers[work]
        assert server.answered, f"{CLIENTS_SERVER} did not answer: {server.stop()[1][-800:]}"
        return server.port

    def stop(self) -> list[str]:
        """Stop every server; what failed (a server that did not exit 0)."""
        failed = []
        for server in self.servers.values():
            status, out = server.stop()
            if status != 0:
                failed.append(f"{CLIENTS_SERVER}: exit {status} after SIGTERM: {out[-800:]}")
        return failed


CLIENTS = ClientsServer()

NUMBER = r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:e[-+]?\d+)?"
QUOTED = r"""(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")"""
JSON_STRING = r'"(?:[^"\\]|\\.)*"'
FINISH = r"(?:stop|length|eos)"
MODEL_TEXT = r"(?:.*\n)+?"
MASKED_KEYS = {"id", "created", "content", "text"}
TEXT_PARTS = re.compile(
    rf"(?P<dots>\.\.\.)|(?P<quoted>{QUOTED})|(?P<commit>\b[0-9a-f]{{7,40}}(?:-dirty)?\b)"
    rf"|(?P<number>{NUMBER})|(?P<finish>\b{FINISH}\b)"
    r"|(?P<chart>^ *(?:[\d.]+ )?\|[ ·o*]*$)|(?P<spaces> +)"
)


def _json_pattern(value, key: str = "") -> str:
    """A pattern for a JSON value: keys and their order kept, masked values any of their kind."""
    if isinstance(value, dict):
        items = [f"{re.escape(json.dumps(k))}: {_json_pattern(v, k)}" for k, v in value.items()]
        return r"\{" + ", ".join(items) + r"\}"
    if isinstance(value, list):
        return r"\[" + ", ".join(_json_pattern(v, key) for v in value) + r"\]"
    if isinstance(value, bool) or value is None:
        return re.escape(json.dumps(value))
    if isinstance(value, (int, float)):
        return NUMBER
    if key in MASKED_KEYS:
        return JSON_STRING
    if key == "finish_reason":
        return f'"{FINISH}"'
    return re.escape(json.dumps(value))


def _line_pattern(line: str) -> str:
    """A pattern for one shown line (not the model's text), by the masking rule."""
    head = "data: " if line.startswith("data: ") else ""
    if line[len(head) :].startswith("{"):
        try:
            return re.escape(head) + _json_pattern(json.loads(line[len(head) :]))
        except json.JSONDecodeError:
            pass
    pattern, at = "", 0
    for match in TEXT_PARTS.finditer(line):
        pattern += re.escape(line[at : match.start()])
        kind = match.lastgroup
        pattern += {
            "dots": ".*",
            "quoted": QUOTED,
            "commit": r"[0-9a-f]{7,40}(?:-dirty)?",
            "number": NUMBER,
            "finish": FINISH,
            "chart": rf" *(?:{NUMBER} +)?\|[ ·o*]*",
            "spaces": " +",
        }[kind]
        at = match.end()
    return pattern + re.escape(line[at:])


def _collapse(patterns: list[str]) -> list[str]:
    """A line (or pair of lines) shown several times in a row: one or more such lines."""
    out, i = [], 0
    while i < len(patterns):
        for k in (1, 2):
            unit, j = patterns[i : i + k], i + k
            while len(unit) == k and patterns[j : j + k] == unit:
                j += k
            if j > i + k:
                out.append("(?:" + "".join(unit) + ")+")
                i = j
                break
        else:
            out.append(patterns[i])
            i += 1
    return out


def output_mismatch(command: Command, stdout: str, stderr: str = "") -> str | None:
    """Where the output differs from what the README shows (by the masking rule), or None."""
    patterns, on_stderr = [], []
    for i, line in enumerate(command.shown):
        line = line.rstrip().replace("runs/mini", "runs/tiny")
        if line.endswith("(stderr)"):
            on_stderr.append(_line_pattern(line.removesuffix("(stderr)").rstrip()))
        elif i in command.model_text:
            patterns.append(MODEL_TEXT)
        elif line.lstrip().startswith("..."):
            patterns.append(r"(?:.*\n)*?")
        else:
            patterns.append(_line_pattern(line) + r"\n")
    while patterns and patterns[-1] == r"\n":  # a blank line closing the block
        patterns.pop()
    printed = "".join(line.rstrip() + "\n" for line in stdout.rstrip("\n").splitlines())
    if not re.fullmatch("".join(_collapse(patterns)), printed):
        return f"prints:\n{printed}\nwhere the README shows:\n" + "\n".join(command.shown)
    for pattern in on_stderr:
        if not re.search(rf"^{pattern}$", stderr, re.MULTILINE):
            return f"stderr lacks {pattern!r}:\n{stderr[-800:]}"
    return None


def _on_terminal(line: str, command: Command, work: Path) -> str | None:
    """Run a chat line on a pseudo-terminal, typing the README's `> ` lines; what failed."""
    typed = [s[2:] for s in command.shown if s.startswith("> ")] or ["^D"]
    log = io.StringIO()
    child = pexpect.spawn(
        "bash", ["-c", line], cwd=str(work), env=_env(work), encoding="utf-8", timeout=120
    )
    child.logfile_read = log
    for text in typed:
        child.expect("> ")
        if text == "^D":
            child.sendeof()
        else:
            child.sendline(text)
    child.expect(pexpect.EOF)
    child.close()
    if child.exitstatus != 0:
        return f"{line}\n  exit {child.exitstatus}: {log.getvalue()[-500:]}"
    transcript = log.getvalue().replace("\r\n", "\n")
    if command.shown:  # ^D is not echoed
        shown = [re.sub(r"^> \^D$", ">...", s) for s in command.shown]
        wrong = output_mismatch(Command(line, shown, command.model_text), transcript)
        return f"{line}\n  {wrong}" if wrong else None
    return None


def _run(command: Command, work: Path) -> str | None:
    """Run (or for a `needs:` line parse) one command in work; what failed, or None."""
    line = command.text
    if NEEDS.search(line):
        _parse(line, work)
        return None
    line = _smoke(line)
    if line.startswith(CLIENTS_SERVER + " "):  # kept for the client lines
        CLIENTS.port(work)
        return None
    if SERVER_LINE.match(line):
        server = Server(line, work)
        status, out = server.stop()
        if not server.answered or (line.startswith("gptcli") and status != 0):
            return f"{server.line}\n  answered {server.answered}, exit {status}: {out[-500:]}"
        return None
    if line.startswith("gptcli chat") and not re.search(r"[<|]", line.partition("#")[0]):
        return _on_terminal(line, command, work)
    if CLIENT_ADDRESS in line:
        line = line.replace(CLIENT_ADDRESS, f"127.0.0.1:{CLIENTS.port(work)}")
    proc = subprocess.run(
        ["bash", "-c", "set -o pipefail; " + line],
        cwd=work,
        env=_env(work),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        return f"{line}\n  exit {proc.returncode}: {proc.stderr.strip()[-500:]}"
    wrong = output_mismatch(command, proc.stdout, proc.stderr) if command.shown else None
    return f"{line}\n  {wrong}" if wrong else None


def _after(lines: list[str]) -> list[set[int]]:
    """For each line, the earlier lines it waits for. A line that tokenizes or trains changes
    the runs later lines read (and which run is the newest): it waits for every earlier line and
    every later line waits for it. A line naming a folder an earlier `--out` wrote waits for that
    line. The other lines only read, and run side by side."""
    trains = {i for i, line in enumerate(lines) if TRAINS.search(line)}
    after = []
    for i, line in enumerate(lines):
        if i in trains:
            after.append(set(range(i)))
            continue
        words = set(re.findall(r"[\w./-]+", line))
        wrote = {j for j in range(i) if set(OUT.findall(lines[j])) & words}
        after.append({j for j in trains if j < i} | wrote)
    return after


def _run_all(folders: list[tuple[list[Command], Path]], workers: int = 2) -> list[str]:
    """Run each folder's commands in its work folder as _after orders them, `workers` at a
    time, the folders' commands taking turns; the failures."""
    jobs = [(k, i) for k, (commands, _) in enumerate(folders) for i in range(len(commands))]
    jobs.sort(key=lambda job: (job[1], job[0]))  # the folders take turns
    after = [_after([c.text for c in commands]) for commands, _ in folders]
    done: set[tuple[int, int]] = set()
    failed: list[str] = []
    running: dict = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        while jobs or running:
            ready = [(k, i) for k, i in jobs if all((k, j) in done for j in after[k][i])]
            for k, i in ready[: workers - len(running)]:
                jobs.remove((k, i))
                commands, work = folders[k]
                running[pool.submit(_run, commands[i], work)] = (k, i)
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                done.add(running.pop(future))
                if future.result() is not None:
                    failed.append(future.result())
    return failed


def test_readme_lines_are_found():
    commands = readme_commands()
    lines = [c.text for c in commands]
    assert len(lines) >= 25, lines
    assert any(line.startswith("cat ") for line in lines)
    assert sum(bool(NEEDS.search(line)) for line in lines) >= 1
    assert any(c.text.startswith("curl ") and c.shown for c in commands)
    assert any(c.text.startswith("python - <<") and c.shown for c in commands)
    assert any(line.startswith("torchrun --standalone") for line in lines)
    assert any(line.startswith("torchrun --nnodes") and NEEDS.search(line) for line in lines)


def test_every_readme_command_runs_as_written(tmp_path):
    """The classifier lines (SST-2, RTE) need none of the others' runs: they run in a folder of
    their own. Two lines run at a time, so the test takes about half the time on two cores."""
    commands = readme_commands()
    apart = [c for c in commands if CLASSIFIER_LINE.search(c.text)]
    rest = [c for c in commands if c not in apart]
    try:
        failed = _run_all(
            [(rest, _workspace(tmp_path / "lm")), (apart, _workspace(tmp_path / "cls"))]
        )
    finally:
        failed_servers = CLIENTS.stop()
    assert not failed + failed_servers, "\n".join(failed + failed_servers)


def test_readme_yaml_blocks_are_recipes(tmp_path):
    from gptcli import recipe as recipe_mod

    blocks = [lines for lang, lines in readme_blocks() if lang == "yaml"]
    assert blocks
    for lines in blocks:
        (tmp_path / "r.yaml").write_text("\n".join(lines) + "\n")
        recipe_mod.load(tmp_path / "r.yaml")


def test_lines_wait_for_the_lines_that_make_what_they_read():
    lines = [
        "gptcli pretrain recipes/tiny.yaml",
        "gptcli sample -c runs/tiny --prompt x",
        "gptcli export runs/tiny --format hf --out tiny-hf",
        "gptcli inspect runs/tiny",
        "gptcli sample --checkpoint tiny-hf --prompt x",
        "gptcli finetune recipes/finetune-lm.yaml --set init=runs/tiny",
        "gptcli sample --prompt x",
    ]
    assert _after(lines) == [set(), {0}, {0}, {0}, {0, 2}, {0, 1, 2, 3, 4}, {0, 5}]


@pytest.mark.parametrize(
    "line, error, needle",
    [
        ("gptcli pretrain recipes/tiny.yaml --bogus  # needs: gpu", "usage", "--bogus"),
        (
            "gptcli pretrain recipes/tiny.yaml --set train.nope=1  # needs: gpu",
            "recipe",
            "train.nope",
        ),
        ("gptcli sampel --prompt x  # needs: gpu", "usage", "sampel"),
    ],
)
def test_a_marked_line_that_would_fail_does_not_parse(line, error, needle):
    from gptcli.console import UserError

    with pytest.raises(_usage_error() if error == "usage" else UserError, match=needle):
        _parse(line, REPO)


@pytest.mark.parametrize(
    "line",
    [
        "torchrun --nnodes 2 --bogus 1 -m gptcli pretrain RECIPE  # needs: several machines",
        "make nothing-of-the-kind  # needs: network",
        "no-such-program --help  # needs: network",
    ],
)
def test_a_marked_line_of_another_program_that_would_fail_does_not_parse(line, tmp_path):
    (tmp_path / "bin").mkdir()
    with pytest.raises((AssertionError, SystemExit)):  # torchrun's argparse exits
        _parse(line, tmp_path / "work")


def _chunk(id_: str, content: str) -> str:
    delta = {"content": content}
    return "data: " + json.dumps({"id": id_, "object": "chunk", "choices": [{"delta": delta}]})


def test_output_masking_keeps_keys_values_and_lines():
    shown = [_chunk("x1", ""), "", _chunk("x1", " a"), "", _chunk("x1", "b"), "", "data: [DONE]"]
    sse = Command("curl ...", shown)
    # other ids and text, another number of chunks
    printed = "\n\n".join([_chunk("y", "q"), _chunk("z", ""), "data: [DONE]"]) + "\n"
    assert output_mismatch(sse, printed) is None
    assert output_mismatch(sse, printed.replace('"object"', '"kind"')) is not None
    assert output_mismatch(sse, printed.replace('"chunk"', '"chonk"')) is not None
    assert output_mismatch(sse, printed.replace("data: [DONE]", "")) is not None


def test_output_masking_of_numbers_text_and_elided_lines():
    shown = [
        "  the N to bed",
        "Usage(tokens=12, ...)",
        "' ' None",
        "... (one per chunk)",
        "'' length",
    ]
    snippet = Command("python - ...", shown, model_text={0})
    printed = "zq\nwith two lines\nUsage(tokens=3, more=1)\n'a' None\n'b' None\n'' stop\n"
    assert output_mismatch(snippet, printed) is None
    assert output_mismatch(snippet, printed.replace("Usage(", "Use(")) is not None
    assert output_mismatch(snippet, printed.replace("'' stop", "'' None")) is not None
    table = Command(
        "gptcli eval ...", ["task   acc  0.4800  ± 0.0502", "eval: in x.json  (stderr)"]
    )
    assert output_mismatch(table, "task acc     0.51  ± 0.05\n", "eval: in x.json\n") is None
    assert output_mismatch(table, "task acc 0.51\n", "eval: in x.json\n") is not None
    assert output_mismatch(table, "task acc     0.51  ± 0.05\n", "") is not None
