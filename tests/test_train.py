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

from gptcli import checkpoint, checkpoint_tensors, device, optim
from gptcli.model import GPT
from gptcli.optim import BatchedMuon, lr_at
from gptcli.recipe import ModelConfig, TrainConfig


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
            checkpoint_tensors.load(ckpt)
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
        checkpoint_tensors.load(mnt / "mini")
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


@pytest.mark.skipif(not shutil.which("cc"), reason="inductor needs a C compiler")
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_the_compile_stops_it_at_once(tmp_path, sig, code):
    """A first compile runs 30 s and more on a CPU: a signal then stops the run at once,
    not once the compiled step is done; no step was trained, so nothing is saved."""
    recipe = write_recipe(tmp_path)
    cold = {"TORCHINDUCTOR_COMPILE_THREADS": "1", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "ic")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gptcli", "pretrain", str(recipe), "--set", "train.compile=on"],
        cwd=tmp_path, env=run_env(**cold), stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    err = ""
    while "train: compiling step 1" not in err:
        line = proc.stderr.readline()
        assert line, f"exited before compiling:\n{err}"
        err += line
    proc.send_signal(sig)
    try:
        err += proc.communicate(timeout=30)[1]  # generous: a signal boundary is within a second
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the compile was not stopped")
    assert proc.returncode == code, err
    assert "interrupted before step 1 finished; nothing saved" in err and "Traceback" not in err
    run = tmp_path / "runs" / "mini"
    assert checkpoint.run_checkpoints(run) == []
    assert not list(run.glob("checkpoints/.tmp-*"))  # nothing half-written either


@pytest.mark.parametrize("ns_dtype", [torch.bfloat16, torch.float32])
def test_batched_muon_steps_like_torch_muon(ns_dtype):
    # tall (24, 8) matrices are batched with wide (8, 24) ones, transposed, as torch does alone;
    # fp32 iterations (CPUs without native bf16) land where torch's bf16 ones do
    torch.manual_seed(0)
    shapes = [(24, 8), (8, 8), (8, 24), (24, 8), (8, 8)]
    reference = [torch.nn.Parameter(torch.randn(shape)) for shape in shapes]
    ours = [torch.nn.Parameter(p.detach().clone()) for p in reference]
    torch_muon = torch.optim.Muon(reference, lr=0.02, weight_decay=0.1)
    batched = BatchedMuon(ours, ns_dtype=ns_dtype, lr=0.02, weight_decay=0.1)
    for _ in range(3):
        for p, q in zip(reference, ours, strict=True):
            p.grad = torch.randn(p.shape)
            q.grad = p.grad.clone()
        torch_muon.step()
        batched.step()
    for p, q in zip(reference, ours, strict=True):
        torch.testing.assert_close(q, p, rtol=0, atol=2e-3)  # three steps move ~0.02
    same = all(torch.equal(p, q) for p, q in zip(reference, ours, strict=True))
    assert same == (ns_dtype == torch.bfloat16)  # fp32 iterations did run in fp32
    assert batched.state_dict()["state"].keys() == torch_muon.state_dict()["state"].keys()


def test_muon_iterates_in_fp32_where_bf16_is_emulated(monkeypatch):
    """On a CPU without native bf16, emulated bf16 matmuls made Muon's iterations ~30x
    slower than fp32; bf16 stays where it is native (and on GPUs), as torch's Muon runs it."""
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=32)
    t = TrainConfig(optimizer="muon")
    for native, expected in ((False, torch.float32), (True, torch.bfloat16)):
        monkeypatch.setattr(optim, "cpu_has_native_bf16", lambda native=native: native)
        muon = optim.build_optimizers(GPT(cfg), t, torch.device("cpu"))[0]
        assert isinstance(muon, BatchedMuon) and muon.ns_dtype == expected
    assert optim.ns_dtype_for(torch.device("cuda")) == torch.bfloat16


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


def test_a_cpu_peak_cached_while_the_machine_was_busy_is_measured_again(tmp_path, monkeypatch):
    """A peak probed under load reads low and MFU over 100 %: the run that beats it re-probes."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("GPTCLI_CACHE", str(cache))
    device.write_probe("cpu_peak_flops.json", f"probe2|{torch.float32}", 1e6)  # 1 MFLOP/s
    recipe = write_recipe(tmp_path)
    sets = ["--set", "train.max_steps=3", "--set", "train.log_every=1", "--set", "train.dtype=fp32"]
    proc = gptcli("pretrain", str(recipe), *sets, cwd=tmp_path, env={"GPTCLI_CACHE": str(cache)})
    assert proc.returncode == 0, proc.stderr
    assert "cached as this CPU's peak (measured while it was busy): measured again" in proc.stderr
    assert device.read_probe("cpu_peak_flops.json", f"probe2|{torch.float32}") > 1e8
    run = tmp_path / "runs" / "mini"
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["mfu"] < 1 for r in records), records
