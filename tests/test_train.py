"""The trainer through the real CLI: exact resume, signals, kill -9, the run lock."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import assert_one_line_error, gptcli, write_recipe

from gptcli import checkpoint
from gptcli.recipe import TrainConfig
from gptcli.train import lr_at


def losses(run):
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records}


def test_schedule_warmup_then_cosine_to_min():
    t = TrainConfig(lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, t) == pytest.approx(0.1) and lr_at(9, t) == pytest.approx(1.0)
    assert lr_at(60, t) == pytest.approx(0.55) and lr_at(110, t) == pytest.approx(0.1)
    assert TrainConfig(lr_schedule="constant", warmup_steps=0).lr == lr_at(
        50, TrainConfig(lr_schedule="constant", warmup_steps=0)
    )


def test_resume_reproduces_the_uninterrupted_run(trained, tmp_path):
    """Delete the last checkpoint of a finished run, resume from the one before: same losses."""
    shutil.copytree(trained / "runs", tmp_path / "runs")
    shutil.copy(trained / "mini.yaml", tmp_path / "mini.yaml")
    run = tmp_path / "runs" / "mini"
    full = losses(run)
    shutil.rmtree(run / "checkpoints" / "step-0000012")
    proc = gptcli("pretrain", "mini.yaml", cwd=tmp_path)
    assert "resuming from" in proc.stderr and "step-0000006" in proc.stderr, proc.stderr
    resumed = losses(run)
    assert sorted(resumed) == sorted(full)
    assert all(resumed[s] == full[s] for s in full if s > 6), (resumed, full)


def _start_long_run(tmp_path, extra=()):
    recipe = write_recipe(tmp_path)
    args = [
        "pretrain",
        str(recipe),
        "--set",
        "train.max_steps=100000",
        "--set",
        "train.save_every=5",
        *extra,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gptcli", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run = tmp_path / "runs" / "mini"
    deadline = time.time() + 120
    while time.time() < deadline and checkpoint.newest_in_run(run) is None:
        time.sleep(0.2)
    assert checkpoint.newest_in_run(run) is not None, "no checkpoint appeared"
    return proc, run


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_and_exits(tmp_path, sig, code):
    proc, run = _start_long_run(tmp_path)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    newest = checkpoint.newest_in_run(run)
    assert f"saved runs/mini/checkpoints/{newest.name}" in err.replace("\n", "")
    assert json.loads((newest / "state.json").read_text())["step"] == checkpoint.step_of(newest)


def test_kill_9_then_resume_from_newest_complete(tmp_path):
    proc, run = _start_long_run(tmp_path)
    time.sleep(0.5)
    proc.kill()
    proc.wait()
    newest = checkpoint.newest_in_run(run)
    again = gptcli(
        "pretrain",
        "mini.yaml",
        "--set",
        f"train.max_steps={checkpoint.step_of(newest) + 2}",
        cwd=tmp_path,
    )
    assert again.returncode == 0, again.stderr
    assert f"resuming from runs/mini/checkpoints/{newest.name}" in again.stderr.replace("\n", "")
    assert not list((run / "checkpoints").glob(".tmp-*"))


def test_second_process_on_a_run_is_refused(tmp_path):
    proc, run = _start_long_run(tmp_path)
    try:
        second = gptcli("pretrain", "mini.yaml", cwd=tmp_path)
        assert_one_line_error(second, "in use by another gptcli process")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
