"""Every `gptcli` command line in README.md's code blocks runs as written.

Lines that train get smaller sizes through `--set` (appended after the recipe, so the line's own
`--set`s still win) and small stand-ins for ../shared/data, all in one temp folder where the lines
run in README order (later lines use the runs earlier ones made). A line whose comment says
`needs: network` (or gpu, multi-node) is only parsed: a known command, known flags, valid keys.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

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
    "recipes/finetune/sst2.yaml": FEW_STEPS,
    "recipes/finetune/rte.yaml": FEW_STEPS,
}
SMOKE["tiny"] = SMOKE["recipes/tiny.yaml"]  # the bundled recipe by name
TRAINS = re.compile(r"gptcli (?:tokenize|pretrain|finetune) ([^\s-]\S*)")  # the RECIPE
OUT = re.compile(r"--out\s+(\S+)")  # a folder a line writes
CLASSIFIER_LINE = re.compile(r"sst2-pretrain|finetune/(sst2|rte)|runs/(sst2|rte)")


def readme_lines() -> list[str]:
    """The lines of README code blocks that run gptcli, in order; a command given twice (with
    other comments) once."""
    lines, seen, in_block = [], set(), False
    for raw in README.read_text().splitlines():
        if raw.startswith("```"):
            in_block = not in_block
        elif in_block and re.search(r"(^|\|\s*)gptcli\s", raw.strip()):
            command = shlex.join(shlex.split(raw, comments=True))
            if command not in seen:
                seen.add(command)
                lines.append(raw.strip())
    return lines


def _smoke(line: str) -> str:
    """The line with its recipe's smaller sizes set right after the recipe."""
    for recipe in TRAINS.findall(line):
        assert recipe in SMOKE, f"{recipe}: add smaller sizes to SMOKE for: {line}"
        sets = " ".join(f"--set {s}" for s in SMOKE[recipe])
        line = re.sub(rf"(?<=\s){re.escape(recipe)}(?=\s|$)", f"{recipe} {sets}", line, count=1)
    return line


def _gptcli_args(line: str) -> list[str]:
    """The arguments of the line's gptcli command: no pipe, redirections or comment."""
    segment = next(s for s in line.split("|") if s.strip().startswith("gptcli "))
    args, words = [], iter(shlex.split(segment, comments=True)[1:])
    for word in words:
        if word in ("<", ">"):
            next(words)  # the file redirected from or to
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


def _parse(line: str, cwd: Path) -> None:
    """Check a line that is not run: a known command, known flags, a recipe with known keys.
    Raises Click's UsageError for an unknown command or flag, UserError for a bad recipe."""
    import click
    import typer.main

    from gptcli import cli
    from gptcli import recipe as recipe_mod

    args = _gptcli_args(line)
    group = typer.main.get_command(cli.app)
    command = group.get_command(click.Context(group), args[0])
    if command is None:
        raise _usage_error()(f"no such command {args[0]!r} in: {line}")
    ctx = command.make_context(args[0], args[1:])
    if "recipe_path" in ctx.params:
        recipe_mod.load(cwd / ctx.params["recipe_path"], ctx.params.get("sets") or [])


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
    (work / "notes.txt").write_text("Once upon a time\nThe end\n")
    (work / "p.txt").write_text("Once upon a time")
    (work / "prompts.txt").write_text("Once upon a time\nOne day\n")
    (work / "held-out.txt").write_text(stories[:2000])
    bin_dir = root / "bin"
    bin_dir.mkdir()
    (bin_dir / "gptcli").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m gptcli "$@"\n')
    (bin_dir / "gptcli").chmod(0o755)
    return work


def test_readme_lines_are_found():
    lines = readme_lines()
    assert len(lines) >= 25, lines
    assert any(line.startswith("cat ") for line in lines)
    assert sum(bool(NEEDS.search(line)) for line in lines) >= 1


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
        wrote = {j for j in range(i) if set(OUT.findall(lines[j])) & set(line.split())}
        after.append({j for j in trains if j < i} | wrote)
    return after


def _run(line: str, work: Path) -> str | None:
    """Run (or for a `needs:` line parse) one line in work; what failed, or None."""
    if NEEDS.search(line):
        _parse(line, work)
        return None
    # the usual cache: no line downloads, and the CPU's peak FLOP/s is there; one thread, as
    # two lines run side by side on the machine's cores
    env = run_env(OMP_NUM_THREADS="1")
    env["PATH"] = f"{work.parent / 'bin'}{os.pathsep}{env['PATH']}"
    proc = subprocess.run(
        ["bash", "-c", "set -o pipefail; " + _smoke(line)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        return f"{line}\n  exit {proc.returncode}: {proc.stderr.strip()[-500:]}"
    return None


def _run_all(folders: list[tuple[list[str], Path]], workers: int = 2) -> list[str]:
    """Run each folder's lines in work as _after orders them, `workers` at a time, the folders'
    lines taking turns; the failures."""
    jobs = [(k, i) for k, (lines, _) in enumerate(folders) for i in range(len(lines))]
    jobs.sort(key=lambda job: (job[1], job[0]))  # the folders take turns
    after = [_after(lines) for lines, _ in folders]
    done: set[tuple[int, int]] = set()
    failed: list[str] = []
    running: dict = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        while jobs or running:
            ready = [(k, i) for k, i in jobs if all((k, j) in done for j in after[k][i])]
            for k, i in ready[: workers - len(running)]:
                jobs.remove((k, i))
                lines, work = folders[k]
                running[pool.submit(_run, lines[i], work)] = (k, i)
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                done.add(running.pop(future))
                if future.result() is not None:
                    failed.append(future.result())
    return failed


def test_every_readme_command_runs_as_written(tmp_path):
    """The classifier lines (SST-2, RTE) need none of the others' runs: they run in a folder of
    their own. Two lines run at a time, so the test takes about half the time on two cores."""
    lines = readme_lines()
    apart = [line for line in lines if CLASSIFIER_LINE.search(line)]
    rest = [line for line in lines if line not in apart]
    failed = _run_all([(rest, _workspace(tmp_path / "lm")), (apart, _workspace(tmp_path / "cls"))])
    assert not failed, "\n".join(failed)


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
