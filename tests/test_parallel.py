"""FSDP under torchrun (2 CPU ranks, gloo): same training as one process, checkpoints that
reshard to another number of ranks, and readers that need no torchrun."""

import json
import os
import re
import shutil
import signal
import subprocess
import textwrap
import time

import pytest
import torch
from conftest import (
    HOLD_IN_SAVE,
    TINY_RECIPE,
    TORCHRUN_ENV,
    gptcli,
    run_env,
    torchrun,
    torchrun_command,
    wait_for_hold,
    write_recipe,
)
from safetensors.torch import load_file

from gptcli import checkpoint, checkpoint_tensors, parallel, trainer
from gptcli.console import UserError
from gptcli.device import Dist
from gptcli.recipe import TrainConfig

# fp32, a flat lr after warmup (the schedule then does not depend on max_steps), one loss per
# step, no evaluation before the last step; a global batch of 4 sequences x 2 micro-batches x 2
# ranks, which 1 and 4 ranks keep too
EXACT = [
    "train.dtype=fp32",
    "train.grad_accum=2",
    "train.lr_schedule=constant",
    "train.log_every=1",
    "train.eval_every=0",
    "train.save_every=1000",
]


def sets(*settings: str) -> list[str]:
    return [a for s in (*EXACT, *settings) for a in ("--set", s)]


def losses(run):
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records}


def logged_steps(metrics) -> int:
    """The last step metrics.jsonl has a whole line for (0 before the first)."""
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    whole = [json.loads(x) for x in lines if x.endswith("}")]
    return whole[-1]["step"] if whole else 0


def stop_with_sigterm(folder, after_step: int) -> int:
    """A long 2-rank FSDP run, stopped by SIGTERM once it has logged after_step; its step."""
    cmd = [*torchrun_command(2), "pretrain", "mini.yaml", *sets("train.parallel=fsdp")]
    cmd += ["--set", "train.max_steps=100000", "--set", "train.compile=off"]  # auto would compile
    proc = subprocess.Popen(
        cmd, cwd=folder, env=run_env(**TORCHRUN_ENV), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    metrics = folder / "runs" / "mini" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and logged_steps(metrics) < after_step:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    stops = re.findall(r"interrupted at step (\d+)", err)  # torchrun itself exits 1
    assert len(stops) == 2 and stops[0] == stops[1], err[-3000:]
    newest = checkpoint.newest_in_run(metrics.parent)
    assert checkpoint.step_of(newest) == int(stops[0])
    return int(stops[0])


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory):
    """A folder with the recipe and its tokenized run (no checkpoints), to copy from."""
    root = tmp_path_factory.mktemp("tokenized")
    write_recipe(root, TINY_RECIPE)
    proc = gptcli("tokenize", "mini.yaml", cwd=root)
    assert proc.returncode == 0, proc.stderr
    return root


def copy_of(tokenized, folder):
    shutil.copytree(tokenized, folder)
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tokenized):
    """Three runs of the same recipe and seed: 2 FSDP ranks stopped by SIGTERM then resumed
    in one process, 2 FSDP ranks uninterrupted, one process with grad_accum x 2."""
    root = tmp_path_factory.mktemp("fsdp")
    folders = {name: copy_of(tokenized, root / name) for name in ("resumed", "fsdp", "single")}
    stop = stop_with_sigterm(folders["resumed"], after_step=2)
    end = [*sets(f"train.max_steps={stop + 3}")]
    resumed = gptcli("pretrain", "mini.yaml", *end, cwd=folders["resumed"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    keep = [
        "--set",
        "train.parallel=fsdp",
        "--set",
        "train.save_every=2",
        "--set",
        "train.keep_last=1",
    ]
    fsdp = torchrun("pretrain", "mini.yaml", *end, *keep, cwd=folders["fsdp"])
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]
    single = gptcli(
        "pretrain", "mini.yaml", *end, "--set", "train.grad_accum=4", cwd=folders["single"]
    )
    assert single.returncode == 0, single.stderr[-3000:]
    return (
        {name: folder / "runs" / "mini" for name, folder in folders.items()},
        stop,
        resumed.stderr,
    )


def test_fsdp_on_two_ranks_trains_as_one_process_with_twice_the_grad_accum(runs):
    run, stop, _ = runs
    sharded, single = losses(run["fsdp"]), losses(run["single"])
    assert sorted(sharded) == sorted(single) == list(range(1, stop + 4))
    for step, loss in single.items():
        assert sharded[step] == pytest.approx(loss, rel=1e-4), (step, sharded, single)
    # keep_last=1: each sharded save pruned the one before; no temp folder is left
    kept = sorted(p.name for p in (run["fsdp"] / "checkpoints").iterdir())
    assert kept == [f"step-{stop + 3:07d}"], kept
    a = load_file(checkpoint.newest_in_run(run["fsdp"]) / "model.safetensors")
    b = load_file(checkpoint.newest_in_run(run["single"]) / "model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


def test_sigterm_on_two_fsdp_ranks_resumes_on_one_with_the_same_losses(runs):
    run, stop, resumed_log = runs
    stopped = checkpoint.run_checkpoints(run["resumed"])[0]
    index = json.loads((stopped / "optim-index.json").read_text())
    assert index["world"] == 2 and (stopped / "optim-00001-of-00002.safetensors").is_file()
    assert json.loads((stopped / "state.json").read_text())["global_batch"] == 4 * 2 * 2
    assert "grad_accum 2 -> 4" in resumed_log, resumed_log
    resumed, uninterrupted = losses(run["resumed"]), losses(run["fsdp"])
    assert sorted(resumed) == sorted(uninterrupted)
    for step in range(stop + 1, stop + 4):
        assert resumed[step] == pytest.approx(uninterrupted[step], rel=1e-4), step


def test_an_fsdp_checkpoint_samples_exports_and_inspects_without_torchrun(runs, tmp_path):
    run, _, _ = runs
    ckpt = checkpoint.newest_in_run(run["fsdp"])
    sample = gptcli(
        "sample", "-c", str(ckpt), "--prompt", "Once", "--max-new-tokens", "5", "--seed", "1"
    )
    assert sample.returncode == 0 and sample.stdout.startswith("Once"), sample.stderr
    out = tmp_path / "hf"
    export = gptcli("export", str(ckpt), "--format", "hf", "--out", str(out))
    assert export.returncode == 0, export.stderr
    assert (out / "config.json").is_file()
    shown = gptcli("inspect", str(ckpt))
    assert shown.returncode == 0, shown.stderr
    assert "sharded over 2 ranks" in shown.stdout, shown.stdout


def test_the_memory_report_of_an_fsdp_run_counts_half_the_state_per_rank(runs):
    run, _, _ = runs
    report = json.loads((run["fsdp"] / "memory.json").read_text())
    weights = load_file(checkpoint.newest_in_run(run["fsdp"]) / "model.safetensors")
    n = sum(w.numel() for w in weights.values())  # the tied embedding stored once
    assert report["sharded"] and "ddp_buckets" not in report
    assert (report["parameters"], report["gradients"], report["optimizer"]) == (2 * n, 2 * n, 4 * n)
    shown = gptcli("inspect", str(run["fsdp"]))
    assert shown.returncode == 0, shown.stderr
    assert "optimizer sharded over 2 ranks" in shown.stdout, shown.stdout


def test_resuming_on_four_ranks_keeps_the_global_batch_and_the_batches(runs, tmp_path):
    """The checkpoint 2 ranks saved at the SIGTERM continues on 4 (grad_accum 2 -> 1) with the
    uninterrupted 2-rank run's losses: the same sequences make up each step."""
    run, stop, _ = runs
    shutil.copytree(run["resumed"].parent.parent, tmp_path / "w")
    ckpts = tmp_path / "w" / "runs" / "mini" / "checkpoints"
    for later in checkpoint.run_checkpoints(ckpts.parent)[1:]:
        shutil.rmtree(later)
    end = sets("train.parallel=fsdp", f"train.max_steps={stop + 2}")
    four = torchrun("pretrain", "mini.yaml", *end, cwd=tmp_path / "w", nproc=4)
    assert four.returncode == 0, four.stderr[-3000:]
    assert "grad_accum 2 -> 1" in four.stderr, four.stderr[-3000:]
    resumed, uninterrupted = losses(ckpts.parent), losses(run["fsdp"])
    for step in (stop + 1, stop + 2):
        assert resumed[step] == pytest.approx(uninterrupted[step], rel=1e-4), step


def test_kill_9_during_an_fsdp_save_keeps_the_previous_checkpoint(runs, tokenized, tmp_path):
    """Every process killed while the step-4 save is half written: step 2 stays the newest
    checkpoint, and a resumed 2-rank run continues from it as if never stopped."""
    run, _, _ = runs
    folder = copy_of(tokenized, tmp_path / "w")
    hook, marker = tmp_path / "hold.py", tmp_path / "held"
    hook.write_text(HOLD_IN_SAVE)
    launch = torchrun_command(2)[:-2]  # the hook script in place of -m gptcli
    cmd = [*launch, str(hook), str(marker), "4", "before", "pretrain", "mini.yaml"]
    cmd += sets("train.parallel=fsdp", "train.save_every=2", "train.max_steps=6")
    proc = subprocess.Popen(
        cmd, cwd=folder, env=run_env(**TORCHRUN_ENV), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        half = folder / wait_for_hold(proc, marker)  # relative to the run's working folder
    finally:
        for rank in range(2):  # the ranks run in sessions of their own: each by its pid
            pid = tmp_path / f"held.pid{rank}"
            if pid.exists():
                os.kill(int(pid.read_text()), signal.SIGKILL)
        proc.kill()
        proc.communicate(timeout=60)
    ckpts = folder / "runs" / "mini" / "checkpoints"
    assert half.parent == ckpts and half.is_dir() and not (half / "state.json").exists()
    assert [p.name for p in checkpoint.run_checkpoints(ckpts.parent)] == ["step-0000002"]
    again = torchrun(
        "pretrain", "mini.yaml", *sets("train.parallel=fsdp", "train.max_steps=5"), cwd=folder
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from runs/mini/checkpoints/step-0000002" in again.stderr.replace("\n", "")
    assert not list(ckpts.glob(".tmp-*"))
    resumed, uninterrupted = losses(ckpts.parent), losses(run["fsdp"])
    assert sorted(resumed) == [1, 2, 3, 4, 5]
    for step in (3, 4, 5):
        assert resumed[step] == pytest.approx(uninterrupted[step], rel=1e-4), step


def test_activation_checkpointing_under_fsdp_keeps_the_losses(runs, tokenized, tmp_path):
    run, _, _ = runs
    folder = copy_of(tokenized, tmp_path / "w")
    settings = ["train.parallel=fsdp", "train.activation_checkpointing=true", "train.max_steps=3"]
    proc = torchrun("pretrain", "mini.yaml", *sets(*settings), cwd=folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    checkpointed, plain = losses(folder / "runs" / "mini"), losses(run["fsdp"])
    for step in (1, 2, 3):
        assert checkpointed[step] == pytest.approx(plain[step], rel=1e-6), step


@pytest.mark.skipif(not shutil.which("cc"), reason="inductor needs a C compiler")
def test_compile_with_activation_checkpointing_under_fsdp_keeps_the_losses(
    runs, tokenized, tmp_path
):
    """train.compile on, FSDP and activation checkpointing together on 2 ranks: inductor
    compiles (into one cache the ranks share) and the losses are the eager run's."""
    run, _, _ = runs
    folder = copy_of(tokenized, tmp_path / "w")
    # one cache for both ranks; compiling in each rank's own process, as a pool of compile
    # workers costs more than it saves on a few cores
    env = {
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
        "TORCHINDUCTOR_COMPILE_THREADS": "1",
    }
    settings = ["train.parallel=fsdp", "train.activation_checkpointing=true"]
    settings += ["train.compile=on", "train.max_steps=2"]
    proc = subprocess.run(
        [*torchrun_command(2), "pretrain", "mini.yaml", *sets(*settings)], cwd=folder,
        env=run_env(**TORCHRUN_ENV, **env), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torch.compile: the first step compiles" in proc.stderr, proc.stderr[-3000:]
    compiled_code = list((tmp_path / "inductor").rglob("*.so"))
    assert compiled_code, "inductor compiled nothing"
    compiled, eager = losses(folder / "runs" / "mini"), losses(run["fsdp"])
    for step in (1, 2):
        assert compiled[step] == pytest.approx(eager[step], rel=1e-4), step


def test_auto_shards_only_when_the_training_state_outgrows_free_memory(capsys):
    two = Dist(rank=0, world=2)
    cpu = torch.device("cpu")
    free = parallel.free_bytes(cpu)
    assert parallel.choose("auto", 1000, "adamw", two, cpu) == "ddp"
    assert parallel.choose("auto", free // 16, "adamw", two, cpu) == "fsdp"
    assert "parallel auto -> fsdp" in capsys.readouterr().err
    assert parallel.choose("fsdp", 1000, "adamw", Dist(), cpu) == "none"
    with pytest.raises(UserError, match="use adamw with fsdp"):
        parallel.choose("fsdp", 1000, "muon", two, cpu)


def test_resuming_on_ranks_that_do_not_divide_the_global_batch_exits_2(tmp_path):
    ckpt = tmp_path / "checkpoints" / "step-0000001"
    ckpt.mkdir(parents=True)
    for name in checkpoint.REQUIRED_FILES:
        (ckpt / name).write_text("{}")
    (ckpt / "state.json").write_text(json.dumps({"step": 1, "global_batch": 8}))
    t = TrainConfig(batch_size=4, grad_accum=2)
    assert trainer.for_world(t, tmp_path, Dist(world=2)).grad_accum == 1
    with pytest.raises(UserError, match="global batch of 8 sequences"):
        trainer.for_world(t, tmp_path, Dist(world=3))


def test_optimizer_shards_saved_by_two_ranks_read_back_for_three(tmp_path):
    """Any rank count reads its rows out of any other's shards (here 7 rows: 4+3 -> 3+3+1)."""
    from safetensors.torch import save_file

    whole = torch.arange(7 * 2, dtype=torch.float32).reshape(7, 2)
    for rank in range(2):
        start, stop = checkpoint_tensors.shard_rows(7, 2, rank)
        tensors = {
            "optim0.0.exp_avg": whole[start:stop].contiguous(),
            "optim0.0.step": torch.ones(()),
        }
        save_file(tensors, str(tmp_path / checkpoint_tensors.shard_file(rank, 2)))
    entries = {
        "optim0.0.exp_avg": {"shape": [7, 2], "sharded": True},
        "optim0.0.step": {"shape": [], "sharded": False},
    }
    index = {"format_version": 1, "world": 2, "tensors": entries}
    (tmp_path / checkpoint_tensors.OPTIM_INDEX).write_text(json.dumps(index))
    saved = checkpoint_tensors.OptimizerState(tmp_path)
    rows = [checkpoint_tensors.shard_rows(7, 3, rank) for rank in range(3)]
    assert rows == [(0, 3), (3, 6), (6, 7)]
    parts = [saved.read("optim0.0.exp_avg", start, stop) for start, stop in rows]
    assert torch.equal(torch.cat(parts), whole)
    assert saved.read("optim0.0.step").item() == 1.0


# gptcli under torchrun with each rank held after one step (before the loop looks for a
# signal) until a signal reaches it, and its exit status kept: a signal lands at a known step
# without sleeping, and each rank's own exit code is seen past torchrun
HOLD_FOR_SIGNAL = textwrap.dedent(
    """\
    import os, runpy, signal, sys, time
    from pathlib import Path
    from gptcli import trainer

    marker, hold_step = Path(sys.argv.pop(1)), int(sys.argv.pop(1))
    rank = os.environ["RANK"]
    train_step = trainer.Trainer.train_step

    def held(self):
        result = train_step(self)
        if self.step == hold_step:
            flag = signal.getsignal(signal.SIGTERM).__self__  # the trainer's SignalFlag
            Path(f"{marker}.held{rank}").write_text("")
            deadline = time.time() + 300
            while flag.signum is None and time.time() < deadline:
                time.sleep(0.01)
        return result

    trainer.Trainer.train_step = held
    try:
        runpy.run_module("gptcli", run_name="__main__")
    except SystemExit as e:
        Path(f"{marker}.exit{rank}").write_text(str(e.code))
        raise
    """
)


def stop_at(folder, hook, marker, step: int, sig: int, settings: list[str]):
    """torchrun of 2 ranks held after step, then sent sig; (torchrun's exit code, each rank's,
    torchrun's stderr)."""
    cmd = [*torchrun_command(2)[:-2], str(hook), str(marker), str(step)]
    cmd += ["pretrain", "mini.yaml", *settings]
    proc = subprocess.Popen(
        cmd, cwd=folder, env=run_env(**TORCHRUN_ENV), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    held = [marker.with_name(f"{marker.name}.held{rank}") for rank in range(2)]
    try:
        deadline = time.time() + 180
        while not all(p.exists() for p in held) and proc.poll() is None:
            assert time.time() < deadline, "no rank reached the step"
            time.sleep(0.05)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    exits = [marker.with_name(f"{marker.name}.exit{rank}") for rank in range(2)]
    ranks = [int(p.read_text()) if p.exists() else None for p in exits]
    return proc.returncode, ranks, err


def test_sigterm_and_sigint_under_torchrun_stop_fsdp_ranks_at_one_step_and_resume(
    tokenized, tmp_path
):
    """10 steps on 2 FSDP ranks: a SIGTERM to torchrun at step 5 (each rank exits 143 after
    the save, torchrun itself 1), a resume stopped by SIGINT at step 7 (130), and a last
    resume that completes the run, each step logged once."""
    folder = copy_of(tokenized, tmp_path / "w")
    hook = tmp_path / "hold.py"
    hook.write_text(HOLD_FOR_SIGNAL)
    settings = sets("train.parallel=fsdp", "train.max_steps=10")
    run = folder / "runs" / "mini"
    resumed = None
    for step, sig, code in ((5, signal.SIGTERM, 143), (7, signal.SIGINT, 130)):
        torchrun_code, ranks, err = stop_at(
            folder, hook, tmp_path / f"s{step}", step, sig, settings
        )
        assert ranks == [code, code], err[-3000:]
        # torchrun's own agent, torch's code, exits 1; now and then it aborts while shutting
        # down after a SIGTERM ("terminate called without an active exception"): the ranks'
        # codes and checkpoints are gptcli's part
        assert torchrun_code in (1, -signal.SIGABRT), err[-3000:]
        saved = f"interrupted at step {step}; saved runs/mini/checkpoints/step-{step:07d}"
        assert saved in err.replace("\n", ""), err[-3000:]
        assert f"interrupted at step {step}; rank 1: saved its shards" in err, err[-3000:]
        if resumed is not None:
            assert f"resuming from runs/mini/checkpoints/step-{resumed:07d}" in err.replace(
                "\n", ""
            )
        assert checkpoint.step_of(checkpoint.newest_in_run(run)) == step
        resumed = step
    end = torchrun("pretrain", "mini.yaml", *settings, cwd=folder)
    assert end.returncode == 0, end.stderr[-3000:]
    assert "resuming from runs/mini/checkpoints/step-0000007" in end.stderr.replace("\n", "")
    assert checkpoint.step_of(checkpoint.newest_in_run(run)) == 10
    logged = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, 11)), logged
