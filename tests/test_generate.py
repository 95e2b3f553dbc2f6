"""`gptcli sample`: every control through the real command, on models with known logits and on
a trained one; text streams of real tokenizers."""

import importlib.util
import json
import os
import re
import shutil
import signal

import numpy as np
import pytest
import torch
from conftest import (
    BOUNDED_SCHEMA,
    SCHEMA_BUDGET,
    SHARED_DATA,
    TINY_RECIPE,
    assert_one_line_error,
    gptcli,
    write_recipe,
)

from gptcli import tokenizer
from gptcli.checkpoint_tensors import Snapshot, build_model, load, save
from gptcli.engine import top1_agreement
from gptcli.model import GPT
from gptcli.recipe import ModelConfig
from gptcli.sampling import TextStream

# --------------------------------------------------------------------------- text streams


def byte_ids(tok, text: str) -> list[int]:
    """One token per UTF-8 byte (byte-level BPE's base alphabet), to split characters."""
    from tokenizers import pre_tokenizers

    words = pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str(text)
    return [tok.token_to_id(symbol) for word, _ in words for symbol in word]


def test_text_stream_never_splits_a_character_and_cuts_stop_strings(trained):
    tok = tokenizer.load(trained / "runs" / "mini")
    ids = byte_ids(tok, "hé€! The end. more")
    stream = TextStream(tok, [], [])
    pieces = [stream.push(i) for i in ids] + [stream.finish()]
    assert "".join(pieces) == "hé€! The end. more"
    assert not any("\ufffd" in p for p in pieces) and "" in pieces  # held back mid-character
    stream = TextStream(tok, [], ["end.", "zzz"])
    pieces = []
    for i in ids:
        pieces.append(stream.push(i))
        if stream.stopped:
            break
    pieces.append(stream.finish())
    assert "".join(pieces) == stream.text == "hé€! The "
    assert stream.stopped


# ----------------------------------------------------------------- models with known logits

LETTERS = "abcdefgh"
LETTER_LOGITS = [4.0, 3.6, 3.1, 2.7, 2.2, 1.9, 1.0, 0.5]


def known_checkpoint(trained, folder, sequence: list[int] | None = None):
    """A checkpoint whose logits are known: every position prefers LETTERS by LETTER_LOGITS
    (everything else at -20), or, with sequence, position t predicts token sequence[t]."""
    tok_path = trained / "runs" / "mini" / "tokenizer.json"
    tok = tokenizer.load(tok_path)
    vocab = tok.get_vocab_size()
    cfg = ModelConfig(
        n_layer=1, n_head=2, n_embd=32, block_size=32, vocab_size=vocab, tie_embeddings=False
    )
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        head = model.lm_head.weight  # (vocab, n_embd)
        if sequence is None:  # norm_f outputs e_31 whatever the input: logits = head[:, 31]
            model.norm_f.bias[31] = 1.0
            head[:, 31] = -20.0
            for letter, logit in zip(LETTERS, LETTER_LOGITS, strict=True):
                head[byte_ids(tok, letter)[0], 31] = logit
        else:  # position t holds e_t, so logits at t favour token sequence[t]
            model.wpe.weight.copy_(torch.eye(32))
            model.norm_f.weight.fill_(1.0)
            for t, token in enumerate(sequence):
                head[token, t] = 10.0
    return save(folder, Snapshot(1, model.cfg, model.state_dict(), tok_path))


@pytest.fixture(scope="module")
def letters(trained, tmp_path_factory):
    return known_checkpoint(trained, tmp_path_factory.mktemp("letters"))


def sample_json(ckpt, *args, cwd=None, input=None):
    proc = gptcli("sample", "-c", str(ckpt), "--json", *args, cwd=cwd, input=input)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.mark.parametrize(
    "flags, allowed",
    [
        (["--top-k", "3"], "abc"),
        (["--top-k", "0", "--top-p", "0.85"], "abcd"),  # a..c cover 0.79, a..d 0.91
        (["--top-k", "0", "--min-p", "0.2"], "abcd"),  # floor at e^4 * 0.2 = e^2.39
    ],
)
def test_filters_never_emit_a_token_outside_their_set(letters, flags, allowed):
    args = ["--prompt", "", "--temperature", "1", "--max-new-tokens", "40", "--seed", "1"]
    results = sample_json(letters, *args, "--num-samples", "4", *flags)
    assert len(results) == 4 and all(r["finish_reason"] == "length" for r in results)
    emitted = set("".join(r["text"] for r in results))
    assert emitted == set(allowed)  # all of the set shows up, nothing outside it


def test_repetition_penalty_covers_prompt_and_generated_tokens(letters):
    args = ["--temperature", "0", "--max-new-tokens", "6", "--dtype", "fp32"]
    (result,) = sample_json(letters, "--prompt", "a", *args, "--repetition-penalty", "2")
    # unpenalised greedy says aaaaaa; a is in the prompt, so 4/2 = 2 loses to b..e first
    assert result["text"] == "bcdeaa"


def test_streaming_never_prints_half_a_character(trained, tmp_path):
    text = "hé€ and ü!"
    tok = tokenizer.load(trained / "runs" / "mini")
    ckpt = known_checkpoint(trained, tmp_path, sequence=byte_ids(tok, text))
    n = str(len(text.encode()))
    proc = gptcli("sample", "-c", str(ckpt), "--temperature", "0", "--max-new-tokens", n)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == text + "\n"
    (result,) = sample_json(ckpt, "--temperature", "0", "--max-new-tokens", n, "--stop", "ü")
    assert result["text"] == "hé€ and " and result["finish_reason"] == "stop"


# --------------------------------------------------------------------------- the trained model


def greedy_reference(trained, prompt: str, n: int) -> str:
    loaded = load(trained / "runs" / "mini")
    model = build_model(loaded).eval()
    tok = tokenizer.load(trained / "runs" / "mini")
    eot = tokenizer.eot_id(tok)
    seq = [eot] + tok.encode(prompt).ids
    new = []
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(torch.tensor([seq]))
            token = int(logits[0, -1].argmax())
            if token == eot:
                break
            seq.append(token)
            new.append(token)
    return tokenizer.decode(tok, new), new


def test_greedy_cli_equals_argmax_decoding(trained):
    text, _ = greedy_reference(trained, "Once upon a time", 25)
    args = ["--prompt", "Once upon a time", "--temperature", "0", "--max-new-tokens", "25"]
    (result,) = sample_json("runs/mini", *args, "--dtype", "fp32", cwd=trained)
    assert result["text"] == text and result["dtype"] == "fp32"


def test_stop_string_across_token_boundaries(trained, tmp_path):
    tok = tokenizer.load(trained / "runs" / "mini")
    ids = tok.encode("Once upon a time there was a cat. The end. Then more").ids
    ckpt = known_checkpoint(trained, tmp_path, sequence=ids)
    stop = "t. The e"  # spans several multi-character tokens
    pieces = [tokenizer.decode(tok, [i]) for i in ids]
    assert not any(stop in p for p in pieces) and max(len(p) for p in pieces) > 1
    args = ["--prompt", "", "--temperature", "0", "--max-new-tokens", str(len(ids))]
    proc = gptcli("sample", "-c", str(ckpt), *args, "--stop", stop, "--stop", "zz", cwd=trained)
    assert proc.stdout == "Once upon a time there was a ca\n"
    (result,) = sample_json(ckpt, *args, "--stop", stop)
    assert result["text"] == "Once upon a time there was a ca"
    assert result["finish_reason"] == "stop" and result["tokens"] < len(ids)


def test_seed_and_flags_reproduce_a_batch(trained):
    args = ["--prompt", "Once", "--seed", "5", "--num-samples", "3", "--min-p", "0.05"]
    args += ["--repetition-penalty", "1.3", "--max-new-tokens", "30"]
    a = sample_json("runs/mini", *args, cwd=trained)
    b = sample_json("runs/mini", *args, cwd=trained)
    assert a == [dict(r, tokens_per_s=x["tokens_per_s"]) for r, x in zip(b, a, strict=True)]
    assert len({r["text"] for r in a}) == 3


def test_each_line_prompt_file_and_long_prompts(trained, tmp_path):
    lines = "One day\n\nOnce\n"  # the empty line is an unconditional sample from <|endoftext|>
    results = sample_json(
        "runs/mini", "--each-line", "--max-new-tokens", "3", cwd=trained, input=lines
    )
    assert [r["prompt"] for r in results] == ["One day", "", "Once"]
    assert all(r["tokens"] <= 3 for r in results)
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("The cat " * 40)  # longer than the 32-token context
    proc = gptcli("sample", "-c", "runs/mini", "--prompt-file", str(prompt), cwd=trained)
    assert proc.returncode == 0 and "keeping the last 32" in proc.stderr
    assert proc.stdout.startswith("The cat " * 40)


def test_sample_imports_only_what_it_needs(trained):
    import importlib.util
    import subprocess
    import sys

    # training's modules (autotune's rules, the optimizers, DDP/FSDP) have no part in sampling
    heavy = ["gptcli.trainer", "gptcli.autotune", "gptcli.optim", "gptcli.parallel"]
    heavy += ["gptcli.data", "gptcli.stories", "transformers"]
    own = [m for m in heavy if m.startswith("gptcli.")]
    assert all(importlib.util.find_spec(m) for m in own), "a name here is no gptcli module"
    code = (
        "import sys, runpy\n"
        "sys.argv = ['gptcli', 'sample', '-c', 'runs/mini', '--max-new-tokens', '1']\n"
        "try:\n    runpy.run_module('gptcli', run_name='__main__')\n"
        "except SystemExit as e:\n    print('EXIT', e.code, file=sys.stderr)\n"
        f"print('LOADED', [m for m in {heavy!r} if m in sys.modules], file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=trained, input=""
    )
    assert "EXIT 0" in proc.stderr and "LOADED []" in proc.stderr, proc.stderr


def test_bf16_agrees_with_fp32_teacher_forced(trained):
    """The check behind --dtype auto: bf16 weights predict the same next token on >= 99 % of
    positions, and on all where fp32's two likeliest tokens are more than 0.01 apart (this
    barely trained model has a median gap of ~0.03, so near-ties that bf16 cannot order are
    common here; every disagreement measured was a gap below 0.002)."""
    run = trained / "runs" / "mini"
    model = build_model(load(run)).eval()
    val = np.fromfile(run / "data" / "val.bin", dtype=np.uint16).astype(np.int64)
    block = model.cfg.block_size
    ids = torch.from_numpy(val[: 64 * block]).view(64, block)
    assert top1_agreement(model, ids, torch.bfloat16, min_margin=0.01) == 1.0
    assert top1_agreement(model, ids, torch.bfloat16) >= 0.98


def test_incomplete_checkpoint(trained, tmp_path, gptcli_inproc):
    ckpt = tmp_path / "step-0000012"
    shutil.copytree(trained / "runs" / "mini" / "checkpoints" / "step-0000012", ckpt)
    (ckpt / "config.json").unlink()
    proc = gptcli_inproc("sample", "-c", str(ckpt), "--prompt", "x", cwd=trained)
    assert_one_line_error(proc, "incomplete checkpoint", "config.json")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--min-p", "1.5"], "--min-p"),
        (["--repetition-penalty", "0"], "--repetition-penalty"),
        (["--stop", ""], "--stop"),
        (["--dtype", "fp16"], "--dtype"),
        (["--num-samples", "0"], "--num-samples"),
        (["--temperature", "nan"], "--temperature"),
        (["--temperature", "inf"], "--temperature"),
        (["--top-p", "nan"], "--top-p"),
        (["--prompt-file", "nope.txt"], "--prompt"),
        (["--each-line"], "--each-line"),
    ],
)
def test_sample_bad_controls(trained, args, needle, gptcli_inproc):
    proc = gptcli_inproc("sample", "--prompt", "x", *args, cwd=trained)
    assert_one_line_error(proc, needle)
    assert proc.stdout == ""  # refused before the prompt is printed


def test_recipe_with_non_finite_sampling_value(tmp_path, gptcli_inproc):
    text = TINY_RECIPE.replace("sample:\n", "sample:\n  temperature: .nan\n")
    for command in ("inspect", "pretrain"):
        proc = gptcli_inproc(command, str(write_recipe(tmp_path, text)), cwd=tmp_path)
        assert_one_line_error(proc, "sample.temperature", "finite")
    assert not (tmp_path / "runs").exists()


def test_sample_refuses_to_pick_or_steer_a_classifier(trained, tmp_path, gptcli_inproc):
    """The newest run is a classifier: sampling without -c names it and says how to pick
    another; named with -c it classifies, but sampling flags are refused, not ignored."""
    lines = (SHARED_DATA / "classify" / "sst2_train.jsonl").read_text().splitlines()[:16]
    (tmp_path / "sst.jsonl").write_text("\n".join(lines) + "\n")
    recipe = write_recipe(
        tmp_path,
        f"name: clf\ninit: {trained / 'runs' / 'mini'}\ntask:\n  kind: classify\n"
        "  format: single\ndata:\n  source: sst.jsonl\n"
        "train:\n  batch_size: 4\n  max_steps: 1\n  warmup_steps: 0\n  save_every: 0\n",
        "clf.yaml",
    )
    assert gptcli("finetune", str(recipe), "--quiet", cwd=tmp_path).returncode == 0
    ckpt = tmp_path / "runs" / "clf" / "checkpoints" / "step-0000001"
    proc = gptcli_inproc("sample", "--prompt", "Once upon a time", cwd=tmp_path)
    assert_one_line_error(proc, str(ckpt.relative_to(tmp_path)), "classifier", "-c")
    assert proc.stdout == ""
    for flag in (["--temperature", "0.5"], ["--stop", "x"], ["--num-samples", "2"]):
        proc = gptcli_inproc("sample", "-c", "runs/clf", "-p", "a fine film", *flag, cwd=tmp_path)
        assert_one_line_error(proc, flag[0], "classifier", "runs/clf")
    proc = gptcli("sample", "-c", "runs/clf", "-p", "a fine film", cwd=tmp_path)
    assert proc.returncode == 0 and len(proc.stdout.split()) == 4  # two labels, two numbers

    lm = tmp_path / "runs" / "lm"  # the newest run a language model: picked, and the log says why
    shutil.copytree(trained / "runs" / "mini", lm)
    os.utime(lm / "checkpoints" / "step-0000012")  # written after the classifier
    proc = gptcli("sample", "-p", "Once", "--max-new-tokens", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "newest checkpoint under ./runs" in proc.stderr and "runs/lm" in proc.stderr


def test_prompt_file_final_newline_is_not_part_of_the_prompt(trained, tmp_path):
    (tmp_path / "p.txt").write_text("Once upon a time\n")
    proc = gptcli(
        *("sample", "-c", str(trained / "runs" / "mini"), "--prompt-file", str(tmp_path / "p.txt")),
        *("--max-new-tokens", "2", "--json"),
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["prompt"] == "Once upon a time"
    shown = gptcli("sample", "--help", env={"COLUMNS": "300"}).stdout
    assert "final newline is not part of it" in shown


def test_sampling_dtype_auto_follows_the_probe_of_the_models_shape(monkeypatch, tmp_path):
    from gptcli import device
    from gptcli import engine as gen

    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=64)
    cpu = torch.device("cpu")
    seen = []
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(gen, "bf16_sampling_speedup", lambda c, rows: seen.append(rows) or 0.6)
    assert gen.pick_dtype("auto", cpu, cfg, rows=8) == torch.float32
    monkeypatch.setattr(gen, "bf16_sampling_speedup", lambda c, rows: 1.3)
    assert gen.pick_dtype("auto", cpu, cfg) == torch.bfloat16
    assert gen.pick_dtype("fp32", cpu, cfg) == torch.float32 and seen == [8]
    monkeypatch.undo()
    monkeypatch.setenv("GPTCLI_CACHE", str(tmp_path))  # the real probe: a ratio, then cached
    assert gen.bf16_sampling_speedup(cfg, 1) > 0
    assert (tmp_path / "cpu_probes.json").is_file()
    # a context of 8 tokens and a vocabulary of 5 still leave the probe a prompt to sample after
    tiny = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=5)
    assert gen.bf16_sampling_speedup(tiny, 1) > 0


# --------------------------------------------------------------------------- structured output

structured = pytest.mark.skipif(
    importlib.util.find_spec("llguidance") is None, reason="needs the structured extra"
)
FREE = ["--temperature", "1", "--top-k", "0", "--seed", "0"]  # the model chooses freely


@pytest.fixture(scope="module")
def schema_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("schema") / "person.json"
    path.write_text(json.dumps(BOUNDED_SCHEMA))
    return path


@structured
def test_json_schema_samples_all_parse_and_validate(trained, schema_file):
    """The model is barely trained: the constraint, not the model, makes 16 samples at
    temperature 1 parse and validate, each ending ("stop") within the token budget (the
    output is longer than the 32-token context: rows slide past it, their matchers go on)."""
    jsonschema = pytest.importorskip("jsonschema")
    args = ["--prompt", "Once", "--json-schema", str(schema_file), "--num-samples", "16"]
    budget = ["--max-new-tokens", str(SCHEMA_BUDGET)]
    results = sample_json("runs/mini", *args, *budget, *FREE, cwd=trained)
    assert len(results) == 16 and {r["finish_reason"] for r in results} == {"stop"}
    for r in results:
        jsonschema.validate(json.loads(r["text"]), BOUNDED_SCHEMA)
        assert r["tokens"] <= SCHEMA_BUDGET
    assert len({r["text"] for r in results}) > 12  # still the model's choice within the schema
    assert max(r["tokens"] for r in results) > 32


@structured
def test_regex_and_choice_samples_each_follow_their_own_matcher(trained):
    args = ["--prompt", "Once", "--regex", "[a-z]{1,8}", "--num-samples", "20"]
    results = sample_json("runs/mini", *args, "--max-new-tokens", "12", *FREE, cwd=trained)
    assert all(r["finish_reason"] == "stop" for r in results)
    assert all(re.fullmatch("[a-z]{1,8}", r["text"]) for r in results), results
    # every line's rows have their own matchers; the plain output is each choice alone
    choices = ["--choice", "yes", "--choice", "no way", "--num-samples", "3"]
    proc = gptcli(
        *("sample", "-c", "runs/mini", "--each-line", *choices, *FREE),
        cwd=trained,
        input="Once\nOne day\n",
    )
    assert proc.returncode == 0, proc.stderr
    outputs = [line for line in proc.stdout.splitlines() if line]
    assert len(outputs) == 6 and set(outputs) <= {"yes", "no way"}, proc.stdout


@structured
def test_a_sample_cut_by_the_budget_is_named_on_stderr(trained, schema_file):
    args = ["--prompt", "Once", "--json-schema", str(schema_file), "--max-new-tokens", "4"]
    proc = gptcli("sample", "-c", "runs/mini", *args, cwd=trained)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith('{"')  # the output alone, streamed: no prompt before it
    assert "warning: the output is cut: --max-new-tokens 4 ended it" in proc.stderr
    assert "raise --max-new-tokens" in proc.stderr
    results = sample_json("runs/mini", *args, "--num-samples", "2", cwd=trained)
    assert [r["finish_reason"] for r in results] == ["length", "length"]


@structured
@pytest.mark.parametrize(
    "args, needles",
    [
        (["--regex", "a", "--stop", "x"], ["--stop does not go with --regex", "cut"]),
        (["--regex", "(?=a)b"], ["--regex", "look-around", "Rust regex"]),
        (["--json-schema", "bad.json"], ["--json-schema bad.json", "keyword 'if' is not"]),
        (["--json-schema", "none.json"], ["--json-schema", "none.json not found"]),
        (["--choice", "a", "--json-object"], ["--json-object and --choice do not go"]),
    ],
)
def test_sample_bad_constraints(trained, tmp_path, args, needles, gptcli_inproc):
    (tmp_path / "bad.json").write_text('{"type": "object", "if": {}}')
    ckpt = str(trained / "runs" / "mini")
    proc = gptcli_inproc("sample", "-c", ckpt, "--prompt", "x", *args, cwd=tmp_path)
    assert_one_line_error(proc, *needles)
    assert proc.stdout == ""


# `python hook.py MARKER STEP ARGS...` runs `gptcli ARGS` with one step of sample's start repeated
# until a signal stops it, MARKER written once the step is under way, so that the signal lands in
# that step's own code: "read" reads model.safetensors, "build" builds the model and copies the
# weights in, "probe" measures bf16 against fp32 (on a CPU made to look bf16-native). Patched
# before the command's modules import these functions by name.
HOLD_IN_START = """\
import runpy, sys
from pathlib import Path
from gptcli import checkpoint_tensors, device

marker, step = Path(sys.argv.pop(1)), sys.argv.pop(1)
module, name = {
    "read": (checkpoint_tensors, "read_weights"),
    "build": (checkpoint_tensors, "build_model"),
    "probe": (device, "faster_ratio"),
}[step]
once = getattr(module, name)
if step == "probe":
    device.cpu_has_native_bf16 = lambda: True


def again_and_again(*args, **kwargs):
    marker.write_text(step)
    while True:
        once(*args, **kwargs)


setattr(module, name, again_and_again)
runpy.run_module("gptcli", run_name="__main__")
"""


@pytest.mark.parametrize("step", ["read", "build", "probe"])
def test_sigterm_while_sample_loads_or_probes_exits_143(trained, tmp_path, step):
    """SIGTERM while the weights are read, the model is built or the dtype probe runs: exit 143
    with one line, and no half-written probe cache."""
    import subprocess
    import sys
    import time

    from conftest import run_env

    hook, marker, cache = tmp_path / "hook.py", tmp_path / "marker", tmp_path / "cache"
    hook.write_text(HOLD_IN_START)
    args = ["sample", "-c", "runs/mini", "--prompt", "Once", "--max-new-tokens", "1"]
    proc = subprocess.Popen(
        [sys.executable, str(hook), str(marker), step, *args],
        cwd=trained,
        env=run_env(GPTCLI_CACHE=str(cache)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), proc.communicate(timeout=60)[1] if proc.poll() is not None else ""
    time.sleep(0.2)  # well inside the repeated step
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)  # generous: the step's next boundary is milliseconds
    assert proc.returncode == 143, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "interrupted", err
    assert not cache.exists() or not [p.name for p in cache.iterdir()], list(cache.iterdir())
