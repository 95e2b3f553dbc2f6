"""The trainer through the real CLI: exact resume, signals, kill -9, the run lock."""

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import (
    HOLD_IN_SAVE,
    TINY_RECIPE,
    TORCHRUN_ENV,
    assert_one_line_error,
    gptcli,
    run_env,
    torchrun,
    torchrun_command,
    wait_for_hold,
    write_recipe,
)

from gptcli import checkpoint
from gptcli.model import Block
from gptcli.optim import BatchedMuon, lr_at
from gptcli.recipe import TrainConfig


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


def test_rerun_after_a_kill_before_the_first_checkpoint_logs_each_step_once(trained, tmp_path):
    """A run killed before its first checkpoint leaves metrics.jsonl and no checkpoint: the
    rerun trains from step 0 and its metrics.jsonl holds each step once, as a run never killed."""
    shutil.copytree(trained / "runs", tmp_path / "runs")
    shutil.copy(trained / "mini.yaml", tmp_path / "mini.yaml")
    run = tmp_path / "runs" / "mini"
    full = (run / "metrics.jsonl").read_text().splitlines()
    shutil.rmtree(run / "checkpoints")
    proc = gptcli("pretrain", "mini.yaml", cwd=tmp_path)
    assert proc.returncode == 0 and "resuming from" not in proc.stderr, proc.stderr
    rerun = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rerun] == [json.loads(x)["step"] for x in full]
    assert losses(run) == {r["step"]: r["loss"] for r in map(json.loads, full)}


def test_changed_optimizer_settings_apply_from_the_resumed_step(trained, tmp_path):
    """--set train.lr=1e-12 on a resumed run trains at 1e-12 (the optimizer used to keep the
    saved lr), and the log, metrics.jsonl and the optimizer agree."""
    from safetensors.torch import load_file

    shutil.copytree(trained / "runs", tmp_path / "runs")
    shutil.copy(trained / "mini.yaml", tmp_path / "mini.yaml")
    sets = ["train.max_steps=16", "train.lr=1e-12", "train.weight_decay=0.5", "train.beta1=0.8"]
    proc = gptcli("pretrain", "mini.yaml", *(a for s in sets for a in ("--set", s)), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for change in ("lr 0.001 -> 1e-12", "weight_decay 0.1 -> 0.5", "beta1 0.9 -> 0.8"):
        assert change in proc.stderr, proc.stderr
    run = tmp_path / "runs" / "mini"
    before = load_file(run / "checkpoints" / "step-0000012" / "model.safetensors")
    after = load_file(run / "checkpoints" / "step-0000016" / "model.safetensors")
    moved = max((after[k] - before[k]).abs().max().item() for k in before)
    assert moved < 1e-9, moved
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["lr"] < 1e-11 for r in records if r["step"] > 12)
    state = json.loads((run / "checkpoints" / "step-0000016" / "state.json").read_text())
    groups = state["optimizer_param_groups"][0]
    assert groups[0]["base_lr"] == 1e-12 and groups[0]["weight_decay"] == 0.5
    assert groups[0]["betas"] == [0.8, 0.95] and groups[1]["weight_decay"] == 0.0


def _start_long_run(tmp_path, extra=(), ranks=1):
    """A pretrain of 100,000 steps (under torchrun with ranks > 1), once it has a checkpoint."""
    recipe = write_recipe(tmp_path)
    args = [
        "pretrain",
        str(recipe),
        "--set",
        "train.max_steps=100000",
        "--set",
        "train.save_every=5",
        "--set",
        "train.compile=off",  # compile: auto would compile a run this long
        *extra,
    ]
    launch = [sys.executable, "-m", "gptcli"] if ranks == 1 else torchrun_command(ranks)
    proc = subprocess.Popen(
        [*launch, *args],
        cwd=tmp_path,
        env=run_env(**(TORCHRUN_ENV if ranks > 1 else {})),
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


def test_ctrl_c_again_and_again_exits_130_without_a_traceback(tmp_path):
    """Ctrl-C pressed repeatedly, through the save and Python's shutdown after it: the last
    ones used to interrupt exit handlers ("Exception ignored in atexit") or kill the process."""
    proc, run = _start_long_run(tmp_path)
    while proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        time.sleep(0.1)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert err.strip().splitlines()[-1].startswith("interrupted"), err
    assert checkpoint.newest_in_run(run) is not None


def test_second_process_is_refused_then_kill_9_and_resume_from_newest_complete(tmp_path):
    """While a run trains, a second process on it is refused; killed with -9, it leaves no lock
    behind, and the next run resumes from the newest complete checkpoint."""
    proc, run = _start_long_run(tmp_path)
    try:
        second = gptcli("pretrain", "mini.yaml", cwd=tmp_path)
        assert_one_line_error(second, "in use by another gptcli process")
    finally:
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


def test_wsd_schedule_is_flat_then_decays_linearly():
    t = TrainConfig(
        lr=1.0,
        warmup_steps=0,
        max_steps=100,
        lr_schedule="wsd",
        decay_fraction=0.2,
        min_lr_ratio=0.0,
    )
    assert lr_at(0, t) == lr_at(79, t) == 1.0
    assert lr_at(90, t) == pytest.approx(0.5) and lr_at(100, t) == pytest.approx(0.0)


def test_auto_dtype_on_cpu_is_bf16_only_where_native_and_measured_faster():
    from gptcli.device import autocast_dtype, cpu_has_native_bf16

    cpu = torch.device("cpu")
    faster = torch.bfloat16 if cpu_has_native_bf16() else None
    assert autocast_dtype(cpu, "auto", bf16_speedup=lambda: 2.0) == faster
    assert autocast_dtype(cpu, "auto", bf16_speedup=lambda: 0.5) is None
    assert autocast_dtype(cpu, "fp32") is None


def test_cpu_training_keeps_freed_memory_for_the_next_step():
    """After keep_freed_memory (called when CPU training starts), a freed 200 MB array stays
    resident for reuse instead of going back to the OS (and faulting in again next step)."""
    import numpy as np

    from gptcli.device import keep_freed_memory

    def resident_mb() -> float:
        status = Path("/proc/self/status").read_text()
        return (
            int(next(ln for ln in status.splitlines() if ln.startswith("VmRSS")).split()[1]) / 1024
        )

    if not Path("/proc/self/status").exists() or not keep_freed_memory():
        pytest.skip("needs Linux with glibc")
    array = np.ones(25_000_000)  # 200 MB, written, so resident
    with_array = resident_mb()
    del array
    # (growth from before the array is no measure: it may reuse memory freed by earlier tests)
    assert resident_mb() > with_array - 50


def test_muon_run_resumes_exactly_and_keep_last_prunes(tmp_path, gptcli_inproc):
    recipe = write_recipe(tmp_path)
    sets = [
        "--set",
        "train.optimizer=muon",
        "--set",
        "train.save_every=2",
        "--set",
        "train.keep_last=2",
        "--set",
        "train.max_steps=8",
        "--set",
        "train.log_every=1",
    ]
    assert gptcli("pretrain", str(recipe), "--quiet", *sets, cwd=tmp_path).returncode == 0
    run = tmp_path / "runs" / "mini"
    assert [p.name for p in checkpoint.run_checkpoints(run)] == ["step-0000006", "step-0000008"]
    full = losses(run)
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < r["mfu"] < 1 for r in records), "MFU is reported against a measured peak"
    shutil.rmtree(run / "checkpoints" / "step-0000008")
    again = gptcli("pretrain", str(recipe), "--quiet", *sets, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    resumed = losses(run)
    assert resumed[7] == full[7] and resumed[8] == full[8]
    switched = gptcli_inproc(
        "pretrain",
        str(recipe),
        *sets[:-2],
        "--set",
        "train.max_steps=10",
        "--set",
        "train.optimizer=adamw",
        cwd=tmp_path,
    )
    assert_one_line_error(switched, "train.optimizer", "--fresh")


def test_kill_9_during_a_save_never_leaves_a_broken_checkpoint(tmp_path):
    """Killed with -9 inside a save, first before its files are written, then (resumed) after
    they are but before the folder is renamed into place: a reader sees only the earlier
    checkpoints, each loads, and each rerun resumes from the newest and clears the half-made
    folder."""
    recipe = write_recipe(tmp_path)
    run = tmp_path / "runs" / "mini"
    hook = tmp_path / "hold.py"
    hook.write_text(HOLD_IN_SAVE)
    sets = ["--set", "train.save_every=1", "--set", "train.compile=off"]
    for step, when in ((3, "before"), (4, "after")):
        marker = tmp_path / f"held-{when}"
        cmd = [sys.executable, str(hook), str(marker), str(step), when, "pretrain", str(recipe)]
        proc = subprocess.Popen(
            [*cmd, *sets], cwd=tmp_path, env=run_env(), stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            half = tmp_path / wait_for_hold(proc, marker)
        finally:
            proc.kill()
            proc.communicate(timeout=60)
        assert half.parent == run / "checkpoints" and half.name.startswith(f".tmp-step-{step:07d}")
        assert (half / "state.json").exists() == (when == "after")
        visible = [p.name for p in checkpoint.run_checkpoints(run)]
        assert visible == [f"step-{s:07d}" for s in range(1, step)]
        for ckpt in checkpoint.run_checkpoints(run):
            checkpoint.load(ckpt)
    again = gptcli("pretrain", str(recipe), "--json", "--set", "train.max_steps=4", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "resuming from runs/mini/checkpoints/step-0000003" in again.stderr.replace("\n", "")
    assert json.loads(again.stdout)["step"] == 4
    assert not list((run / "checkpoints").glob(".tmp-*"))


def test_full_disk_during_save_keeps_previous_checkpoint(trained, tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    shutil.copytree(trained / "runs" / "mini", tmp_path / "copy")
    shutil.rmtree(tmp_path / "copy" / "checkpoints" / "step-0000012")
    used = sum(p.stat().st_size for p in (tmp_path / "copy").rglob("*") if p.is_file())
    ckpt = sum(p.stat().st_size for p in (tmp_path / "copy/checkpoints/step-0000006").iterdir())
    size_kb = (used + ckpt // 2) // 1024 + 64
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(mnt)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        shutil.copytree(tmp_path / "copy", mnt / "mini")
        proc = gptcli(
            "pretrain", str(trained / "mini.yaml"), "--set", f"run_dir={mnt / 'mini'}", cwd=trained
        )
        assert proc.returncode == 1, proc.stderr
        assert "disk full while saving step-0000012" in proc.stderr
        assert "step-0000006 is intact" in proc.stderr and "Traceback" not in proc.stderr
        assert [p.name for p in checkpoint.run_checkpoints(mnt / "mini")] == ["step-0000006"]
        assert not list((mnt / "mini" / "checkpoints").glob(".tmp-*"))
        checkpoint.load(mnt / "mini")
    finally:
        subprocess.run(["umount", str(mnt)])


def test_ddp_two_cpu_processes_stop_on_a_signal_resume_and_start_fresh(tmp_path):
    """torchrun passes a SIGTERM on to its ranks: they agree on the step to stop at, rank 0
    saves it, and the next torchrun resumes from it; rank 0 speaks for the job, and --fresh
    trains every rank in the folder rank 0 picked."""
    proc, run = _start_long_run(tmp_path, ranks=2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    stops = re.findall(r"interrupted at step (\d+); (saved \S+|rank 1: rank 0 saves)", err)
    assert len(stops) == 2 and stops[0][0] == stops[1][0], err[-2000:]  # one step for both
    step = int(stops[0][0])
    newest = checkpoint.newest_in_run(run)
    assert checkpoint.step_of(newest) == step
    state = json.loads((newest / "state.json").read_text())
    assert state["tokens_seen"] == step * 2 * 4 * 32  # steps x ranks x batch x block
    args = ["pretrain", "mini.yaml", "--quiet", "--json"]
    again = torchrun(*args, "--set", f"train.max_steps={step + 2}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert len(again.stdout.splitlines()) == 1  # one summary: rank 0 speaks for the job
    assert json.loads(again.stdout)["step"] == step + 2
    assert checkpoint.step_of(checkpoint.newest_in_run(run)) == step + 2
    logged = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged == sorted(set(logged)) and logged[-1] == step + 2  # each step logged once
    # --fresh: every rank trains in the folder rank 0 picked (each rank picking its own once
    # sent a rank that looked after rank 0 had made runs/mini-2 on to runs/mini-3)
    for fresh in ("mini-2", "mini-3"):
        proc = torchrun(*args, "--fresh", "--set", "train.max_steps=3", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert [p.name for p in checkpoint.run_checkpoints(run.parent / fresh)] == ["step-0000003"]
    assert sorted(p.name for p in run.parent.iterdir()) == ["mini", "mini-2", "mini-3"]


def test_compile_without_a_cpp_compiler_warns_and_trains_eagerly(tmp_path):
    recipe = write_recipe(tmp_path)
    proc = gptcli(
        "pretrain", str(recipe), "--set", "train.compile=on", "--set", "train.max_steps=3",
        cwd=tmp_path, env={"CXX": str(tmp_path / "no-such-g++")},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "no C++ compiler" in proc.stderr and "Traceback" not in proc.stderr


def test_batched_muon_steps_like_torch_muon():
    # tall (24, 8) matrices are batched with wide (8, 24) ones, transposed, as torch does alone
    torch.manual_seed(0)
    shapes = [(24, 8), (8, 8), (8, 24), (24, 8), (8, 8)]
    reference = [torch.nn.Parameter(torch.randn(shape)) for shape in shapes]
    ours = [torch.nn.Parameter(p.detach().clone()) for p in reference]
    torch_muon = torch.optim.Muon(reference, lr=0.02, weight_decay=0.1)
    batched = BatchedMuon(ours, lr=0.02, weight_decay=0.1)
    for _ in range(3):
        for p, q in zip(reference, ours, strict=True):
            p.grad = torch.randn(p.shape)
            q.grad = p.grad.clone()
        torch_muon.step()
        batched.step()
    for p, q in zip(reference, ours, strict=True):
        torch.testing.assert_close(q, p, rtol=0, atol=2e-3)  # three steps move ~0.02
    assert batched.state_dict()["state"].keys() == torch_muon.state_dict()["state"].keys()


def test_final_checkpoint_carries_the_final_evaluation(trained_copy):
    """The last step's evaluation is in the final checkpoint: its state.json, inspect and a
    re-run of a finished pretrain all report the val_loss that metrics.jsonl ends with."""
    run = trained_copy / "runs" / "mini"  # a copy: the re-run opens the run to train it
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    last_val = [r for r in records if "val_loss" in r][-1]
    assert last_val["step"] == 12
    final = checkpoint.newest_in_run(run)
    assert checkpoint.read_state(final)["metrics"]["val_loss"] == last_val["val_loss"]
    info = json.loads(gptcli("inspect", str(run), "--json", cwd=trained_copy).stdout)
    assert info["newest_checkpoint"]["metrics"]["val_loss"] == last_val["val_loss"]
    assert info["last_metrics"]["val_loss"] == last_val["val_loss"]
    again = gptcli("pretrain", "mini.yaml", "--json", cwd=trained_copy)
    assert again.returncode == 0, again.stderr
    assert "already at step 12" in again.stderr
    assert json.loads(again.stdout)["val_loss"] == last_val["val_loss"]


def test_failing_final_evaluation_still_saves_the_final_checkpoint(tmp_path, monkeypatch):
    from gptcli import pretrain, recipe
    from gptcli.tasks.lm import LMTask

    text = TINY_RECIPE.replace("max_steps: 12", "max_steps: 4").replace(
        "save_every: 6", "save_every: 0"
    )
    path = write_recipe(tmp_path, text.replace("eval_every: 6", "eval_every: 2"))
    calls = []
    evaluate = LMTask.evaluate

    def fails_at_the_end(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # steps 2 and 4 evaluate: the second is the final one
            raise RuntimeError("evaluation broke")
        return evaluate(self, *args, **kwargs)

    monkeypatch.setattr(LMTask, "evaluate", fails_at_the_end)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError, match="evaluation broke"):
        pretrain.pretrain(recipe.load(path))
    final = checkpoint.newest_in_run(tmp_path / "runs" / "mini")
    assert final is not None and checkpoint.step_of(final) == 4
    assert checkpoint.read_state(final)["metrics"]["step"] == 4


def test_compile_auto_compiles_only_when_the_eager_time_left_repays_it(tmp_path, monkeypatch):
    from gptcli import trainer
    from gptcli.device import write_probe
    from gptcli.recipe import ModelConfig
    from gptcli.trainer import PAYBACK, compile_pays, expected_compile_s

    enough = PAYBACK * 40.0
    assert compile_pays(1000, 2 * enough / 1000, 40.0)[0]
    wanted, why = compile_pays(1000, enough / 2000, 40.0)
    assert not wanted and "1000 steps left" in why and "under" in why
    assert not compile_pays(0, 10.0, 0.0)[0]
    # the expected compile does not grow with the layers (one block is compiled) until a run
    # here has measured this shape's
    monkeypatch.setenv("GPTCLI_CACHE", str(tmp_path))
    small, deep = (ModelConfig(n_layer=n, n_head=2, n_embd=16) for n in (2, 12))
    assert expected_compile_s(deep, 4, None)[0] == expected_compile_s(small, 4, None)[0]
    assert expected_compile_s(deep, 4, None)[1] == "estimated"
    write_probe(trainer.PROBES, trainer.compile_cost_key(deep, 4, None, "LMTask"), 3.5)
    assert expected_compile_s(deep, 4, None) == (3.5, "as measured here")
    assert expected_compile_s(deep, 4, torch.bfloat16)[1] == "estimated"


def test_slowdown_watch_warns_once_when_tokens_per_s_collapses():
    from gptcli.trainer import SlowdownWatch

    watch = SlowdownWatch()
    # the first window (warm-up) is left out; one slow window (a save) is no collapse
    rates = [100.0, 16000, 15000, 2000, 16000, 15500, 1000, 900, 800, 700, 600]
    warnings = [watch.check(r) for r in rates]
    assert [i for i, w in enumerate(warnings) if w] == [8]
    assert "OMP_WAIT_POLICY=PASSIVE" in warnings[8] and "16,000" in warnings[8]
    steady = SlowdownWatch()
    assert not any(steady.check(r) for r in [100.0] + [16000, 9000, 12000] * 5)


# the tiny recipe, long enough for compile: auto to time 3 eager steps, compile at step 4 and
# time compiled and eager steps in turn (5-10) before the checkpoint at step 10
TIMED_RECIPE = TINY_RECIPE.replace("max_steps: 12", "max_steps: 20").replace(
    "save_every: 6", "save_every: 10"
)


def fake_compile(monkeypatch, compiled_ms: float) -> list:
    """torch.compile as a wrapper and compile: auto's clock set so that an eager step takes
    10 ms, the first compiled step 2 s more and later ones compiled_ms; returns the compiled
    forwards of the first block, one per compile (each counts its calls: one per step)."""
    from gptcli import trainer

    clock, compiles = [0.0], []

    def tick() -> float:
        clock[0] += 0.01
        return clock[0]

    class Compiled:
        def __init__(self, forward):
            self.forward, self.calls = forward, 0

        def __call__(self, *args, **kwargs):
            clock[0] += 2.0 if self.calls == 0 else (compiled_ms - 10) / 1000
            self.calls += 1
            return self.forward(*args, **kwargs)

    monkeypatch.setattr(trainer, "step_clock", tick)
    monkeypatch.setattr(trainer, "why_no_compile", lambda d: None)

    def wrap(forward):
        owner = forward.__self__  # a block (forward) or the model (loss)
        if not isinstance(owner, Block) or owner.attn.layer > 0:
            return forward  # the first block's forward times the step
        compiles.append(Compiled(forward))
        return compiles[-1]

    monkeypatch.setattr(torch, "compile", wrap)
    return compiles


def test_auto_decisions_are_recorded_and_reused_on_resume(tmp_path, monkeypatch):
    """dtype: auto and compile: auto decide once (probes, eager then compiled steps timed);
    state.json keeps what they decided and a resume on the same device type takes it without
    deciding again."""
    from gptcli import device, pretrain, recipe, trainer

    monkeypatch.setenv("GPTCLI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(trainer, "bf16_training_speedup", lambda cfg, batch: 2.0)
    monkeypatch.setattr(trainer, "compile_pays", lambda *args: (True, "repays"))
    compiles = fake_compile(monkeypatch, compiled_ms=5)
    monkeypatch.chdir(tmp_path)
    path = write_recipe(tmp_path, TIMED_RECIPE)
    pretrain.pretrain(recipe.load(path))
    run = tmp_path / "runs" / "mini"
    full = losses(run)
    decided = {
        "device": "cpu",
        "dtype": "bf16",
        "compile": True,
        "compiled_step_ms": 5.0,
        "eager_step_ms": 10.0,
    }
    for step in (10, 20):
        ckpt = run / "checkpoints" / f"step-{step:07d}"
        assert checkpoint.read_state(ckpt)["auto"] == decided
    assert len(compiles) == 1  # after the timed eager steps

    def no_probe(*args):
        raise AssertionError("a resumed run decided again")

    monkeypatch.setattr(trainer, "bf16_training_speedup", no_probe)
    monkeypatch.setattr(trainer, "compile_pays", no_probe)
    shutil.rmtree(run / "checkpoints" / "step-0000020")
    pretrain.pretrain(recipe.load(path))
    assert len(compiles) == 2 and compiles[1].calls == 10  # every resumed step
    resumed = losses(run)
    assert all(resumed[s] == full[s] for s in full if s > 10), (resumed, full)
    assert trainer.recorded_auto(run, torch.device("cpu")) == decided
    assert trainer.recorded_auto(run, torch.device("cuda")) == {}  # another device decides anew


def test_compile_auto_goes_back_to_eager_when_compiled_steps_are_slower(
    tmp_path, monkeypatch, capsys
):
    """The compiled step is timed against the eager one; slower, the run trains on eagerly
    (the same losses as a run that never compiled), records why, and keeps the measured compile
    cost for the next run's rule."""
    from gptcli import device, pretrain, recipe, trainer

    cache = tmp_path / "cache"
    monkeypatch.setenv("GPTCLI_CACHE", str(cache))
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(trainer, "bf16_training_speedup", lambda cfg, batch: 2.0)
    monkeypatch.setattr(trainer, "compile_pays", lambda *args: (True, "repays"))
    compiles = fake_compile(monkeypatch, compiled_ms=20)
    monkeypatch.chdir(tmp_path)
    pretrain.pretrain(recipe.load(write_recipe(tmp_path, TIMED_RECIPE)))
    assert "compiled step 20 ms vs eager 10 ms: back to eager" in capsys.readouterr().err
    run = tmp_path / "runs" / "mini"
    for step in (10, 20):
        auto = checkpoint.read_state(run / "checkpoints" / f"step-{step:07d}")["auto"]
        assert auto["compile"] is False and auto["compiled_step_ms"] == 20.0
    assert [c.calls for c in compiles] == [4]  # compiling, then 3 timed steps beside 3 eager
    eager = write_recipe(tmp_path, TIMED_RECIPE.replace("name: mini", "name: eager"), "e.yaml")
    pretrain.pretrain(recipe.load(eager, ["train.compile=off"]))
    assert losses(run) == losses(tmp_path / "runs" / "eager")
    entries = json.loads((cache / trainer.PROBES).read_text()).values()
    costs = [e for e in entries if e["key"].startswith("compile s|LMTask|4|torch.bfloat16")]
    assert [e["value"] for e in costs] == [2.0] and costs[0]["measured"]


def test_dtype_auto_trains_in_fp32_where_bf16_measures_slower(tmp_path, monkeypatch):
    from gptcli import device, pretrain, recipe, trainer

    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(trainer, "bf16_training_speedup", lambda cfg, batch: 0.8)
    monkeypatch.chdir(tmp_path)
    text = TINY_RECIPE.replace("max_steps: 12", "max_steps: 3").replace("save_every: 6", "")
    pretrain.pretrain(recipe.load(write_recipe(tmp_path, text)))
    final = checkpoint.newest_in_run(tmp_path / "runs" / "mini")
    # 3 steps are too few to time: compile stays undecided, for a longer resume to decide
    assert checkpoint.read_state(final)["auto"] == {"device": "cpu", "dtype": "fp32"}


def test_sigterm_while_the_model_is_built_exits_143_at_once(tmp_path):
    """A model whose initialisation takes seconds (a 4M-token embedding, its weights drawn in
    parts with Python between them) stops at the next part on SIGTERM: exit 143 with
    "interrupted", long before the build would end, and no checkpoint."""
    recipe = write_recipe(tmp_path)
    args = ["--set", "model.vocab_size=4000000", "--set", "train.memory_check=false"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "gptcli", "pretrain", str(recipe), *args],
        cwd=tmp_path,
        env=run_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = ""
    while "train: building the model" not in seen:
        line = proc.stderr.readline()
        assert line, seen
        seen += line
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=20)
    assert proc.returncode == 143, seen + rest
    assert rest.strip().splitlines()[-1] == "interrupted", rest
    assert "Traceback" not in rest and "parameters" not in rest  # the trainer never started
    assert not (tmp_path / "runs" / "mini" / "checkpoints").exists()
