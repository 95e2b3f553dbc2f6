"""The real entry point: pipelines, exit codes, one-line errors."""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import assert_one_line_error, gptcli, run_env, write_recipe
from tokenizers import Tokenizer


def test_version_and_help_with_examples():
    assert gptcli("--version").stdout.strip().startswith("gptcli ")
    for command in ("tokenize", "pretrain", "finetune", "sample", "inspect"):
        proc = gptcli(command, "--help")
        assert proc.returncode == 0 and "Examples" in proc.stdout, command


def test_no_command_shows_the_help_and_no_empty_error(gptcli_inproc):
    proc = gptcli_inproc()
    assert proc.returncode == 2 and "Commands" in proc.stdout and proc.stderr == "", proc.stderr


@pytest.mark.parametrize("command", ["--help", "tokenize", "pretrain", "finetune"])
def test_help_and_a_bad_recipe_do_not_import_torch(tmp_path, command):
    """--help and a recipe that cannot run answer at once, before torch loads."""
    (tmp_path / "bad.yaml").write_text("name: ..\n")
    args = [command] if command == "--help" else [command, "bad.yaml"]
    code = (
        "import sys, runpy\n"
        f"sys.argv = ['gptcli', *{args!r}]\n"
        "try:\n    runpy.run_module('gptcli', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True
    )
    assert "NO-TORCH" in proc.stderr, proc.stderr
    if command != "--help":
        assert "recipe key 'name'" in proc.stderr, proc.stderr


def test_run_folder_layout(trained):
    run = trained / "runs" / "mini"
    assert (run / "recipe.yaml").is_file()
    Tokenizer.from_file(str(run / "tokenizer.json"))
    manifest = json.loads((run / "data" / "manifest.json").read_text())
    assert manifest["format_version"] == 5 and manifest["dtype"] == "uint16"
    assert manifest["max_tokens"] == 0 and manifest["stopped_early"] is False
    read = [(s["source"], s["kind"]) for s in manifest["sources"]]
    assert read == [("builtin:stories", "builtin")]
    train = np.fromfile(run / "data" / "train.bin", dtype=np.uint16)
    assert len(train) == manifest["train"]["tokens"] > 1000
    steps = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert steps == ["step-0000006", "step-0000012"]
    for name in ("model.safetensors", "config.json", "tokenizer.json", "trainer.safetensors"):
        assert (run / "checkpoints" / "step-0000012" / name).is_file()
    state = json.loads((run / "checkpoints" / "step-0000012" / "state.json").read_text())
    assert state["step"] == 12 and state["format_version"] == 2
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for key in ("step", "loss", "lr", "tokens_per_s", "tokens_seen", "elapsed_s"):
        assert all(key in r for r in records), key
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evals] == [6, 12] and all("val_bpb" in r for r in evals)


def test_pretrain_json_reports_bpb_against_unigram(trained, tmp_path):
    """A finished run only reports, a longer one resumes, --fresh trains from scratch elsewhere
    (its --json summary: the bits per byte and the unigram baseline)."""
    shutil.copytree(trained / "runs" / "mini", tmp_path / "runs" / "mini")
    shutil.copy(trained / "mini.yaml", tmp_path)
    again = gptcli("pretrain", "mini.yaml", cwd=tmp_path)
    assert again.returncode == 0 and "already at step 12" in again.stderr, again.stderr
    longer = gptcli("pretrain", "mini.yaml", "--set", "train.max_steps=14", cwd=tmp_path)
    assert "resuming from" in longer.stderr and "step-0000012" in longer.stderr, longer.stderr
    fresh = gptcli(
        "pretrain", "mini.yaml", "--fresh", "--quiet", "--json", "--set", "train.max_steps=4",
        cwd=tmp_path,
    )  # fmt: skip
    assert fresh.returncode == 0, fresh.stderr
    summary = json.loads(fresh.stdout)
    assert summary["run_dir"] == "runs/mini-2" and summary["step"] == 4
    assert summary["val_bpb"] > 0 and summary["unigram_bpb"] > 0
    assert (tmp_path / "runs" / "mini" / "checkpoints" / "step-0000014").is_dir()


def test_sample_defaults_to_newest_checkpoint_and_is_reproducible(trained, tmp_path):
    # a folder of its own: other tests add newer runs to the shared one
    shutil.copytree(trained / "runs" / "mini", tmp_path / "runs" / "mini")
    a = gptcli("sample", "--prompt", "Once upon a time", "--seed", "3", cwd=tmp_path)
    b = gptcli("sample", "--prompt", "Once upon a time", "--seed", "3", cwd=tmp_path)
    assert a.returncode == 0, a.stderr
    assert "step-0000012" in a.stderr  # named on stderr...
    assert "step-0000012" not in a.stdout  # ...never on stdout
    assert a.stdout == b.stdout and a.stdout.startswith("Once upon a time")
    c = gptcli("sample", "--prompt", "Once upon a time", "--seed", "4", cwd=tmp_path)
    assert c.stdout != a.stdout


def test_sample_json_and_stdin_prompt(trained):
    proc = gptcli(
        "sample",
        "-c",
        "runs/mini",
        "--json",
        "--max-new-tokens",
        "5",
        "--temperature",
        "0",
        cwd=trained,
        input="One day",
    )
    result = json.loads(proc.stdout)
    assert result["prompt"] == "One day" and result["finish_reason"] in ("length", "eos")
    assert result["tokens"] <= 5
    stream = gptcli(
        "sample",
        "-c",
        "runs/mini",
        "--max-new-tokens",
        "5",
        "--temperature",
        "0",
        "--prompt",
        "One day",
        cwd=trained,
    )
    nostream = gptcli(
        "sample",
        "-c",
        "runs/mini",
        "--max-new-tokens",
        "5",
        "--temperature",
        "0",
        "--prompt",
        "One day",
        "--no-stream",
        cwd=trained,
    )
    assert stream.stdout == nostream.stdout == "One day" + result["text"] + "\n"


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--temperature", "-1"], "--temperature"),
        (["--top-p", "1.5"], "--top-p"),
        (["--top-k", "-2"], "--top-k"),
        (["--checkpoint", "runs/nope"], "checkpoint not found"),
        (["--max-new-tokens", "abc"], "max-new-tokens"),
    ],
)
def test_sample_bad_input(trained, args, needle, gptcli_inproc):
    proc = gptcli_inproc("sample", "--prompt", "x", *args, cwd=trained)
    assert_one_line_error(proc, needle)


def test_sample_without_any_run(tmp_path, gptcli_inproc):
    proc = gptcli_inproc("sample", "--prompt", "x", cwd=tmp_path)
    assert_one_line_error(proc, "no complete checkpoint")


def test_tokenize_pipeline_round_trip(trained, gptcli_inproc):
    enc = gptcli(
        "tokenize", "--tokenizer", "runs/mini", cwd=trained, input="Once upon a time\nThe cat\n"
    )
    lines = enc.stdout.splitlines()
    assert len(lines) == 2 and all(x.isdigit() for x in lines[0].split())
    dec = gptcli(
        "tokenize",
        "--tokenizer",
        "runs/mini/tokenizer.json",
        "--decode",
        cwd=trained,
        input=enc.stdout,
    )
    assert dec.stdout == "Once upon a time\nThe cat\n"
    one = gptcli("tokenize", "--tokenizer", "runs/mini", "--json", "héllo", cwd=trained)
    obj = json.loads(one.stdout)
    assert obj["text"] == "héllo" and len(obj["tokens"]) == len(obj["ids"])
    assert "".join(obj["tokens"]).replace("\ufffd", "") in ("héllo", "hllo")
    counts = gptcli("tokenize", "--tokenizer", "runs/mini", "--count", cwd=trained, input="a b\n\n")
    tok = Tokenizer.from_file(str(trained / "runs/mini/tokenizer.json"))
    assert counts.stdout.split() == [str(len(tok.encode("a b").ids)), "0"]
    ids_json = "[" + ", ".join(lines[1].split()) + "]\n"
    arr = gptcli("tokenize", "--tokenizer", "runs/mini", "--decode", cwd=trained, input=ids_json)
    assert arr.stdout == "The cat\n"
    bad = gptcli_inproc(
        "tokenize", "--tokenizer", "runs/mini", "--decode", "1 2 999999", cwd=trained
    )
    assert_one_line_error(bad, "999999")


def test_tokenize_recipe_skips_when_up_to_date(trained):
    recipe = trained / "mini.yaml"
    shard = trained / "runs" / "mini" / "data" / "train.bin"
    before = shard.stat().st_mtime_ns
    proc = gptcli("tokenize", str(recipe), cwd=trained)
    assert proc.returncode == 0 and "up to date" in proc.stderr
    assert shard.stat().st_mtime_ns == before


@pytest.mark.parametrize(
    "recipe_text, sets, needles",
    [
        ("name: x\ntrain:\n  learning_rate: 1\n", [], ["train.learning_rate", "train.lr"]),
        ("name: x\n", ["model.n_embd=100", "model.n_head=3"], ["model.n_embd", "n_head"]),
        ("name: x\n", ["train.lr=0"], ["train.lr", "> 0"]),
        ("name: x\nmodel: [1, 2\n", [], ["not valid YAML", "line"]),
        ("name: x\ndata:\n  source: /nonexistent/corpus.txt\n", [], ["/nonexistent/corpus.txt"]),
    ],
)
def test_pretrain_bad_recipe(tmp_path, recipe_text, sets, needles, gptcli_inproc):
    recipe = write_recipe(tmp_path, recipe_text)
    args = ["pretrain", str(recipe)] + [x for s in sets for x in ("--set", s)]
    assert_one_line_error(gptcli_inproc(*args, cwd=tmp_path), *needles)


@pytest.mark.parametrize("name", ["..", ".", "../x", "a\x1b[2Jb"])
def test_run_name_cannot_leave_runs(tmp_path, name, gptcli_inproc):
    recipe = write_recipe(tmp_path, "name: x\n")
    proc = gptcli_inproc("tokenize", str(recipe), "--set", f"name={name}", cwd=tmp_path)
    assert_one_line_error(proc, "recipe key 'name'", "one plain folder name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mini.yaml"]


def test_missing_recipe_and_unknown_flag(tmp_path, gptcli_inproc):
    proc = gptcli_inproc("pretrain", "nope.yaml", cwd=tmp_path)
    assert_one_line_error(proc, "recipe not found")
    assert_one_line_error(gptcli_inproc("pretrain", "x.yaml", "--bogus", cwd=tmp_path), "--bogus")


def test_bad_input_leaves_the_run_untouched(trained, gptcli_inproc):
    run = trained / "runs" / "mini"
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    proc = gptcli_inproc("pretrain", "mini.yaml", "--set", "model.n_layer=3", cwd=trained)
    assert_one_line_error(proc, "model.n_layer", "--fresh")
    after = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    assert before == after


def test_tokenize_refuses_to_rebuild_shards_under_checkpoints(trained, gptcli_inproc):
    shard = trained / "runs" / "mini" / "data" / "train.bin"
    before = shard.stat().st_mtime_ns
    proc = gptcli_inproc("tokenize", "mini.yaml", "--set", "tokenizer.vocab_size=300", cwd=trained)
    assert_one_line_error(proc, "has checkpoints", "name:")
    assert shard.stat().st_mtime_ns == before


# --------------------------------------------------------------------------- signals


def _popen(*args: str, cwd, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gptcli", *args],
        cwd=cwd,
        env=run_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


def _wait_for_line(stream, needle: bytes) -> bytes:
    """Read stream line by line until one holds needle; everything read."""
    seen = b""
    while needle not in seen:
        line = stream.readline()
        assert line, seen
        seen += line
    return seen


def _assert_interrupted(proc, code: int, err: bytes) -> None:
    """Exit 130/143 with one line, "interrupted", after whatever the command logged."""
    assert proc.returncode == code, err
    assert err.decode().strip().splitlines()[-1] == "interrupted", err
    assert b"Traceback" not in err


@pytest.mark.parametrize(
    "sig, code, existed", [(signal.SIGINT, 130, False), (signal.SIGTERM, 143, True)]
)
def test_signal_during_bpe_training(tmp_path, sig, code, existed):
    """A run folder the interrupted command made is removed; one that was there stays as it
    was, minus temp files."""
    recipe = write_recipe(
        tmp_path, "name: big\ndata:\n  builtin_mb: 3\ntokenizer:\n  vocab_size: 2000\n"
    )
    run = tmp_path / "runs" / "big"
    if existed:
        run.mkdir(parents=True)
        (run / "notes.txt").write_text("mine")
    proc = _popen("tokenize", str(recipe), cwd=tmp_path)
    err = _wait_for_line(proc.stderr, b"training a 2000-token")
    proc.send_signal(sig)
    _, rest = proc.communicate(timeout=60)
    _assert_interrupted(proc, code, err + rest)
    if existed:
        left = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
        assert (run / "notes.txt").read_text() == "mine"
        assert not [p for p in left if p.endswith((".tmp", ".part"))], left
    else:
        assert not run.exists(), sorted(run.rglob("*"))


def test_sigint_during_a_long_sample(trained, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Once upon a time\n" * 2000)
    with open(prompts, "rb") as stdin:
        proc = _popen("sample", "-c", "runs/mini", "--each-line", cwd=trained, stdin=stdin)
        proc.stdout.readline()  # the first answer is out: sampling goes on
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    _assert_interrupted(proc, 130, err)


def test_sigint_while_tokenize_waits_on_stdin_stops_the_pipeline(trained):
    """Ctrl-C reaches the whole foreground job: `gptcli tokenize ... && next` must not go on."""
    command = f"{shlex.quote(sys.executable)} -m gptcli tokenize --tokenizer runs/mini && echo next"
    proc = subprocess.Popen(
        ["bash", "-c", command],
        cwd=trained,
        env=run_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    proc.stdin.write(b"Once upon a time\n")
    proc.stdin.flush()
    assert proc.stdout.readline().split()  # answered; now it waits for the next line
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert b"next" not in out
    _assert_interrupted(proc, 130, err)


def test_closed_stdout_ends_quietly(trained, tmp_path):
    """`gptcli tokenize ... | head -c 20`: the reader went away, which is no error of ours."""
    lines = tmp_path / "lines.txt"
    lines.write_text("Once upon a time there was a cat\n" * 50_000)
    with open(lines, "rb") as stdin:
        proc = _popen("tokenize", "--tokenizer", "runs/mini", cwd=trained, stdin=stdin)
        proc.stdout.read(20)
        proc.stdout.close()
        err = proc.stderr.read()
        proc.wait(timeout=60)
    assert proc.returncode == 0 and not err, err


# --------------------------------------------------------------------------- not UTF-8


def _run_bytes(*args: str, cwd, input: bytes = b""):
    """gptcli with raw bytes on stdin; an argument's bad bytes are given as os.fsdecode gives
    them (surrogates), which subprocess turns back into the bytes themselves."""
    return gptcli(*args, cwd=cwd, input=input, text=False)


BAD = os.fsdecode(b"b\xffad")


@pytest.mark.parametrize(
    "args, stdin, needle",
    [
        (["sample", "--prompt", "Once " + BAD], b"", "--prompt: not UTF-8 at byte offset 6"),
        (["sample", "--max-new-tokens", "2"], b"ok\nfine\nab\xffc", "stdin line 3: not UTF-8"),
        (["sample", "--each-line"], b"ok\nab\xffc\n", "stdin line 2: not UTF-8 at byte offset 2"),
        (["sample", "--prompt", "x", "--stop", BAD], b"", "--stop: not UTF-8 at byte offset 1"),
        (["tokenize", "--tokenizer", "runs/mini", "ok", BAD], b"", "TEXT argument 2: not UTF-8"),
        (["tokenize", "--tokenizer", "runs/mini"], b"ok\nab\xffc\n", "stdin line 2: not UTF-8"),
        (["tokenize", "--tokenizer", "runs/mini", "--count"], b"\xfe\n", "stdin line 1: not"),
        (["inspect", "runs/mini", "--text", BAD], b"", "--text: not UTF-8 at byte offset 1"),
    ],
)
def test_text_that_is_not_utf8_exits_2_naming_where(trained, args, stdin, needle):
    if args[0] == "sample":
        args = [*args, "-c", "runs/mini"]
    proc = _run_bytes(*args, cwd=trained, input=stdin)
    proc.stderr = proc.stderr.decode()
    assert_one_line_error(proc, needle)


def test_prompt_file_that_is_not_utf8_names_line_and_byte(trained, tmp_path, gptcli_inproc):
    (tmp_path / "p.txt").write_bytes(b"fine\nab\xffc\n")
    proc = gptcli_inproc(
        "sample", "-c", "runs/mini", "--prompt-file", str(tmp_path / "p.txt"), cwd=trained
    )
    assert_one_line_error(proc, "p.txt line 2: not UTF-8 at byte offset 2")


# --------------------------------------------------------------------------- output paths


@pytest.mark.parametrize(
    "args, needle",
    [
        (["export", "runs/mini", "--format", "gptcli", "--out", "/proc/x"], "--out /proc/x"),
        (["export", "runs/mini", "-f", "hf", "--out", "mini.yaml/out"], "--out mini.yaml/out"),
        (["inspect", "runs/mini", "--plot", "mini.yaml/loss.png"], "mini.yaml/loss.png"),
        (["tokenize", "mini.yaml", "--set", "run_dir=mini.yaml/sub"], "mini.yaml/sub"),
    ],
)
def test_unwritable_output_path_exits_2_naming_it(trained, args, needle, gptcli_inproc):
    """(As root, permissions stop nothing: /proc and a path under a regular file still do.)"""
    proc = gptcli_inproc(*args, cwd=trained)
    assert_one_line_error(proc, needle)
    assert "unexpected" not in proc.stderr


def test_full_disk_exits_1_naming_what_was_written(trained):
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "gptcli", "tokenize", "--tokenizer", "runs/mini", "hello"],
            cwd=trained,
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            env=run_env(),
            timeout=60,
        )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1 and "unexpected" not in proc.stderr
    assert "stdout: No space left on device" in proc.stderr
