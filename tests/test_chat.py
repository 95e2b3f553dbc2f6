"""`gptcli chat`: on a pseudo-terminal, and scripted with JSON lines on stdin."""

import json
import os
import shutil
import signal
import subprocess
import sys

import pexpect
import pytest
from conftest import BOUNDED_SCHEMA, SCHEMA_BUDGET, assert_one_line_error, gptcli, run_env


def fake_classifier(trained, folder):
    """A copy of the base checkpoint whose config says classifier: refused before its weights."""
    ckpt = folder / "classifier"
    shutil.copytree(trained / "runs" / "mini" / "checkpoints" / "step-0000012", ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config["task"] = {"kind": "classify", "format": "single", "label_names": ["a", "b"]}
    config["n_classes"] = 2
    (ckpt / "config.json").write_text(json.dumps(config))
    return ckpt


def spawn(cwd, *args: str) -> pexpect.spawn:
    return pexpect.spawn(
        sys.executable,
        ["-m", "gptcli", "chat", *args],
        cwd=str(cwd),
        env=run_env(),
        encoding="utf-8",
        timeout=60,
    )


def test_chat_json_lines_reply_in_the_template(trained, chat_trained):
    first = [{"role": "user", "content": "Count to 3."}]
    second = [{"role": "system", "content": "Be brief."}, *first]
    lines = json.dumps(first) + "\n\n" + json.dumps(second) + "\n"
    args = ("-c", str(chat_trained), "--temperature", "0", "--dtype", "fp32")
    proc = gptcli("chat", *args, input=lines, cwd=trained)
    assert proc.returncode == 0, proc.stderr
    replies = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(replies) == 2 and all(r["role"] == "assistant" for r in replies)
    sample = gptcli("sample", *args, "--prompt", "Count to 3.", "--json", cwd=trained)
    assert replies[0]["content"] == json.loads(sample.stdout)["text"]

    # a base model continues the text (its notice is covered on the terminal); a bad line
    # after good ones: those were answered
    base = ("-c", "runs/mini", "--max-new-tokens", "3", "--quiet")
    proc = gptcli("chat", *base, input=lines + "{}\n", cwd=trained)
    assert_one_line_error(proc, "stdin line 4", "role")
    assert len(proc.stdout.splitlines()) == 2


def test_chat_json_schema_makes_every_reply_json(trained, chat_trained, gptcli_inproc):
    pytest.importorskip("llguidance")
    jsonschema = pytest.importorskip("jsonschema")
    schema = trained / "chat-schema.json"
    schema.write_text(json.dumps(BOUNDED_SCHEMA))
    asks = [[{"role": "user", "content": f"Count to {i}."}] for i in (3, 5)]
    lines = "".join(json.dumps(ask) + "\n" for ask in asks)
    args = ("-c", str(chat_trained), "--json-schema", str(schema), "--seed", "1")
    proc = gptcli("chat", *args, "--max-new-tokens", str(SCHEMA_BUDGET), input=lines, cwd=trained)
    assert proc.returncode == 0, proc.stderr
    replies = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["finish_reason"] for r in replies] == ["stop", "stop"]
    for reply in replies:
        jsonschema.validate(json.loads(reply["content"]), BOUNDED_SCHEMA)
    proc = gptcli_inproc("chat", *args, "--stop", "}", input=lines, cwd=trained)
    assert_one_line_error(proc, "--stop does not go with --json-schema")


def test_chat_on_a_terminal(trained, chat_trained):
    chat = spawn(trained, "-c", str(chat_trained), "--max-new-tokens", "8", "--seed", "1")
    chat.expect("/reset clears")
    chat.expect("> ")
    chat.sendline("Count to 3.")
    chat.expect("> ")
    chat.sendline("Count to 4. Count to 5. Count to 6. Count to 7.")
    chat.expect("dropped the oldest")  # the history outgrew the 32-token context
    chat.expect("> ")
    chat.sendline("/reset")
    chat.expect("conversation cleared")
    chat.expect("> ")
    chat.sendeof()
    chat.expect(pexpect.EOF)
    chat.wait()
    assert chat.exitstatus == 0

    # a base model replies forever to this: Ctrl-C cancels the reply, not the session
    endless = spawn(trained, "-c", "runs/mini", "--max-new-tokens", "1000000", "--temperature", "0")
    endless.expect("no chat template")
    endless.expect("> ")
    endless.sendline("Once upon a time")
    endless.expect("Once upon a time\r\n")
    endless.expect(r"\S")  # the reply is streaming
    endless.sendintr()
    endless.expect("reply cancelled")
    endless.expect("> ")
    # the interrupted step ran on this thread: the next reply streams as the first did
    endless.sendline("The end")
    endless.expect("The end\r\n")
    endless.expect(r"\S")
    endless.sendintr()
    endless.expect("reply cancelled")
    endless.expect("> ")
    endless.sendline("/system Be brief.")
    endless.expect("system message set")
    endless.expect("> ")
    endless.send("half a line")
    endless.expect("half a line")
    endless.sendintr()  # drops the line, as a shell does
    endless.expect("> ")
    endless.sendintr()  # at an empty prompt: quit
    endless.expect(pexpect.EOF)
    endless.wait()
    assert endless.exitstatus == 130


def test_sigterm_ends_chat_with_143_during_a_reply_and_at_the_prompt(trained):
    """Ctrl-C only cancels a reply or drops a half-typed line; SIGTERM, how a supervisor stops
    a program, ends the session wherever it lands."""
    endless = spawn(trained, "-c", "runs/mini", "--max-new-tokens", "1000000", "--temperature", "0")
    endless.expect("> ")
    endless.sendline("Once upon a time")
    endless.expect("Once upon a time\r\n")
    endless.expect(r"\S")  # the reply is streaming
    endless.kill(signal.SIGTERM)
    endless.expect(pexpect.EOF)
    endless.wait()
    assert "reply cancelled" not in endless.before
    assert endless.exitstatus == 143

    typing = spawn(trained, "-c", "runs/mini")
    typing.expect("> ")
    typing.send("half a line")
    typing.expect("half a line")
    typing.kill(signal.SIGTERM)
    typing.expect(pexpect.EOF)
    typing.wait()
    assert typing.exitstatus == 143


def test_chat_with_stdin_closed_is_the_end_of_input(trained):
    proc = subprocess.run(  # `gptcli chat <&-`: no stdin at all, not an empty one
        [sys.executable, "-m", "gptcli", "chat", "-c", "runs/mini"],
        cwd=trained,
        capture_output=True,
        text=True,
        env=run_env(),
        timeout=300,
        preexec_fn=lambda: os.close(0),
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "error" not in proc.stderr


def test_chat_refuses_a_classifier(trained, tmp_path, gptcli_inproc):
    classifier = str(fake_classifier(trained, tmp_path))
    proc = gptcli_inproc("chat", "-c", classifier, input="", cwd=trained)
    assert_one_line_error(proc, "classifier", "-c")


def test_chat_and_serve_help_show_examples():
    for command in ("chat", "serve"):
        proc = gptcli(command, "--help")
        assert proc.returncode == 0 and "Examples" in proc.stdout, command
