"""GPU speed against nanoGPT and against a whole-model compile, FSDP, the model ladder: one script
for a GPU session, every baseline rerun on the same card within one budget (--budget-s).

One JSON line per check on stdout (and in --out/gpu_ladder.jsonl), each with "ok" and "card":
  env       the card, torch, the bf16 peak MFU is measured against, nanoGPT's commit, the plan
  regions   gptcli pretrain at nanoGPT's architecture (model.preset=gpt2, mlp gelu_erf, bias,
            tied embeddings, vocabulary 50,304, no dropout), 16 x 1024 x 4 tokens a step, bf16,
            compiled as the trainer compiles (each block's forward and the loss), inductor's
            cache empty: first step (cold compile) in seconds, then tokens/s and MFU
  whole     the same run with the whole model's forward compiled as one graph (what the trainer
            did before; benchmarks/gptcli_variant.py whole-compile), its own empty cache
  mfu       the regions run's MFU at 124M bf16 against the target (45 %)
  nanogpt   nanoGPT's train.py (compile=True, bf16, the same shape, batch and accumulation) on
            gptcli's own token shards (written as its train.bin/val.bin with a meta.pkl), empty
            cache: first iteration, tokens/s, and MFU by gptcli's FLOPs formula, same peak
  ratio     gptcli (regions, and whole) tokens/s over nanoGPT's, against the target (1.2)
  fsdp      the regions run's shape under torchrun --nproc_per_node 1 with train.parallel=fsdp
            on a 1-rank mesh (gptcli_variant.py fsdp-1: the trainer alone does not shard one
            process), with and without activation checkpointing: tokens/s, peak memory
  recipe    the shipped recipes/gpt2-124m.yaml (llama preset), same batch: tokens/s and MFU
  ladder    GPT-2 shapes at a 1024 context, bf16, every block checkpointed: whether each fits,
            tokens/s, MFU, the memory estimate and the measured peak, while the budget lasts

    python benchmarks/gpu_ladder.py --data build/gpu-data --out build/gpu-out  # <= 7.7 min
    python benchmarks/gpu_ladder.py --smoke --data FILE --out DIR  # the plumbing, CPU, toy sizes

The GPU machine has no network: carry build/nanoGPT (a checkout without .git) and the data.
A check that would start with less of the budget left than it needs is skipped, and a run that
reaches its cap is stopped: the script ends within --budget-s (440 s; plus start-up and at most
15 s for a stopped run to exit). DIR also holds the inductor caches (hundreds of MB): copy only
its gpu_ladder.jsonl and *.txt logs out.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cuda_check import Skipped, run_checks  # noqa: E402  (benchmarks/ is this script's folder)

from gptcli.data import shards  # noqa: E402
from gptcli.device import peak_flops  # noqa: E402
from gptcli.model import GPT  # noqa: E402
from gptcli.recipe import PRESETS, ModelConfig  # noqa: E402

VOCAB, BLOCK, BATCH, ACCUM = 50304, 1024, 16, 4
# (name, n_layer, n_head, n_embd): GPT-2 small, medium and large
LADDER = [("124M", 12, 12, 768), ("350M", 24, 16, 1024), ("774M", 36, 20, 1280)]
SHAPE_124M = (12, 12, 768)
# nanoGPT's GPT in gptcli's keys: learned positions, LayerNorm, exact GELU, biases, tied head
EQUAL_ARCH = ["model.preset=gpt2", "model.mlp=gelu_erf", "model.bias=true",
              "model.tie_embeddings=true", "model.dropout=0.0"]  # fmt: skip
TARGET_MFU, TARGET_RATIO = 0.45, 1.2
# --smoke: the same plumbing on this CPU at toy sizes, so a one-shot GPU session finds no typo
DEVICE = {
    "gptcli": [],
    "nanogpt": {"device": "cuda", "compile": True, "dtype": "bfloat16"},
    "compile": "on",
}
RUNS = ROOT / "runs"  # where gptcli puts runs named name=...


@dataclass
class Plan:
    """A check's expected seconds on one H100 (it starts only with that much of the budget
    left) and its cap (its runs are stopped there)."""

    expected_s: float
    cap_s: float


PLAN = {
    "env": Plan(5, 30),
    "regions": Plan(75, 150),
    "whole": Plan(90, 180),
    "mfu": Plan(0, 1),
    "nanogpt": Plan(70, 150),
    "ratio": Plan(0, 1),
    "fsdp": Plan(90, 180),
    "recipe": Plan(65, 120),
    "ladder": Plan(40, 150),
}


def use_smoke_sizes() -> None:
    global VOCAB, BLOCK, BATCH, ACCUM, LADDER, SHAPE_124M
    VOCAB, BLOCK, BATCH, ACCUM = 512, 64, 4, 2
    LADDER = [("tiny", 2, 2, 64), ("small", 3, 2, 96)]
    SHAPE_124M = (2, 2, 64)
    DEVICE["gptcli"] = ["train.device=cpu", "train.dtype=fp32", "train.compile=off",
                        "model.n_layer=2", "model.n_head=2", "model.n_embd=64"]  # fmt: skip
    DEVICE["nanogpt"] = {"device": "cpu", "compile": False, "dtype": "float32"}
    DEVICE["compile"] = "off"  # --compile on: compiled toy runs, ~40 s each on a CPU


class Budget:
    """The script's seconds: each check starts only with its expected time left, and each run
    in it gets at most its cap, or what is left."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def start(self, name: str) -> None:
        need = PLAN[name].expected_s
        if self.left() < need:
            raise Skipped(f"{self.left():.0f} s of the budget left, {need:.0f} s needed")

    def cap(self, name: str, share: float = 1.0) -> float:
        return max(1.0, min(PLAN[name].cap_s * share, self.left()))


def card() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return "cpu (no CUDA device)"


def gpt2_flops_per_token(n_layer: int, n_head: int, n_embd: int) -> int:
    cfg = ModelConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=BLOCK,
                      vocab_size=VOCAB, **PRESETS["gpt2"])  # fmt: skip
    with torch.device("meta"):
        return GPT(cfg).flops_per_token()


# --------------------------------------------------------------------------- running things


def run_capped(command: list[str], cwd: Path, env: dict, timeout: float) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of command, stopped at timeout with its whole process group
    (torchrun's workers too, which would keep the GPU): exit code 124 then."""
    proc = subprocess.Popen(
        command, cwd=cwd, env=env, text=True, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # the trainer saves and exits on SIGTERM
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        return 124, out, err + f"\n(stopped at its cap of {timeout:.0f} s)"


def fresh_cache(out: Path, name: str) -> Path:
    """An empty inductor (and Triton) cache folder, so the first step's compile is cold."""
    folder = out / f"inductor-{name}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def cache_env(folder: Path) -> dict:
    return {"TORCHINDUCTOR_CACHE_DIR": str(folder), "TRITON_CACHE_DIR": str(folder / "triton")}


GPTCLI = [sys.executable, "-m", "gptcli"]
WHOLE = [sys.executable, str(ROOT / "benchmarks" / "gptcli_variant.py"), "whole-compile"]
FSDP_1 = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
          str(ROOT / "benchmarks" / "gptcli_variant.py"), "fsdp-1"]  # fmt: skip


def gptcli_pretrain(
    name: str, data: str, steps: int, extra: list[str], timeout: float, out: Path,
    launcher: list[str] = GPTCLI, env: dict | None = None, recipe: str = "recipes/gpt2-124m.yaml",
) -> dict:  # fmt: skip
    """A pretrain run's figures (run_figures), its stderr kept in out/NAME.stderr.txt; the
    figures of what it logged even when it failed or reached its cap."""
    sets = [
        f"name={name}", f"data.source={data}", "data.val_fraction=0.02",
        f"model.vocab_size={VOCAB}", f"tokenizer.vocab_size={VOCAB}", f"model.block_size={BLOCK}",
        f"train.max_steps={steps}", f"train.batch_size={BATCH}", f"train.grad_accum={ACCUM}",
        "train.warmup_steps=20", "train.eval_every=0", "train.save_every=0",
        "train.eval_batches=2", "train.log_every=1", *DEVICE["gptcli"], *extra,
    ]  # fmt: skip
    args = ["pretrain", recipe, "--fresh", "--json", *[a for s in sets for a in ("--set", s)]]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **(env or {})}
    shutil.rmtree(RUNS / name, ignore_errors=True)  # else gptcli names the new run NAME-2
    start = time.perf_counter()
    code, stdout, stderr = run_capped([*launcher, *args], ROOT, env, timeout)
    (out / f"{name}.stderr.txt").write_text(stderr[-200_000:])
    figures = {"exit": code, "wall_s": round(time.perf_counter() - start, 1)}
    figures |= run_figures(RUNS / name)
    if code == 0:  # the summary's parameter count: the equal-architecture check against nanoGPT
        figures["params"] = json.loads(stdout.strip().splitlines()[-1]).get("params")
    shutil.rmtree(RUNS / name / "checkpoints", ignore_errors=True)  # 1.5 GB at 124M
    if code != 0:
        tail = "\n".join(stderr.strip().splitlines()[-3:])
        raise AssertionError(f"pretrain exited {code}: {tail} (logged before: {figures})")
    return figures


def steady(records: list[dict], key: str) -> float | None:
    """The median of key past compile and warm-up (step 20), else past the first step."""
    values = [r[key] for r in records if r["step"] > 20 and key in r]
    values = values or [r[key] for r in records if r["step"] > 1 and key in r]
    return round(statistics.median(values), 4) if values else None


def run_figures(run_dir: Path) -> dict:
    """First step (its seconds hold the compile), steady tokens/s and MFU, memory: from the
    run's metrics.jsonl (one record a step) and memory.json, as far as they got."""
    metrics, memory_file = run_dir / "metrics.jsonl", run_dir / "memory.json"
    records = [json.loads(line) for line in metrics.read_text().splitlines()] if (
        metrics.exists()) else []  # fmt: skip
    figures: dict = {"steps_logged": len(records)}
    first = next((r for r in records if r["step"] == 1), None)
    if first is not None:
        figures["first_step_s"] = first["elapsed_s"]
    if len(records) > 1:
        figures["tokens_per_s"] = steady(records, "tokens_per_s")
        figures["mfu"] = steady(records, "mfu")
        figures["last_loss"] = records[-1]["loss"]
    if memory_file.exists():
        report = json.loads(memory_file.read_text())
        figures["estimate_gib"] = round(report["total"] / 2**30, 2)
        if "peak_allocated" in report:
            figures["peak_allocated_gib"] = round(report["peak_allocated"] / 2**30, 2)
    return figures


# --------------------------------------------------------------------------- the checks


def check_env(nanogpt: Path, budget_s: float) -> dict:
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    peak, source = peak_flops(device, torch.bfloat16 if cuda else None)
    commit = nanogpt / "COMMIT"  # a checkout without .git (carried) names its commit here
    properties = torch.cuda.get_device_properties(0) if cuda else None
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "capability": f"{properties.major}.{properties.minor}" if properties else None,
        "memory_gib": round(properties.total_memory / 2**30, 1) if properties else None,
        "peak_tflops": peak / 1e12 if peak else None,
        "peak_source": source,
        "nanogpt_commit": commit.read_text().strip() if commit.exists() else None,
        "budget_s": budget_s,
        "plan": {k: [p.expected_s, p.cap_s] for k, p in PLAN.items()},
    }


def check_compile(variant: str, data: str, steps: int, out: Path, budget: Budget) -> dict:
    """regions (the trainer's compile) or whole (the whole model's forward), cold cache."""
    launcher = GPTCLI if variant == "regions" else WHOLE
    cache = cache_env(fresh_cache(out, variant))
    figures = gptcli_pretrain(
        f"gpu-{variant}", data, steps, [*EQUAL_ARCH, f"train.compile={DEVICE['compile']}"],
        budget.cap(variant), out, launcher, cache,
    )  # fmt: skip
    return {"compile": variant, "architecture": "nanoGPT's (see EQUAL_ARCH)", **figures}


def against(results: dict, name: str, key: str, base: str) -> float | None:
    """results[name][key] over results[base][key], when both ran."""
    ours, theirs = results.get(name, {}).get(key), results.get(base, {}).get(key)
    return round(ours / theirs, 3) if ours and theirs else None


def check_mfu(results: dict) -> dict:
    mfu = results["regions"].get("mfu")
    if mfu is None:
        raise Skipped("the regions run logged no MFU")
    return {"mfu": mfu, "target": TARGET_MFU, "met": mfu >= TARGET_MFU,
            "before": "41.4-43.0 % on an H200 (2026-11-27)"}  # fmt: skip


def nanogpt_data(run_dir: Path, folder: Path) -> None:
    """gptcli's shards as nanoGPT's train.bin/val.bin (uint16) and meta.pkl."""
    manifest = json.loads((run_dir / "data" / "manifest.json").read_text())
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        ids = np.asarray(shards.load_shard(run_dir, split, manifest))
        ids.astype(np.uint16).tofile(folder / f"{split}.bin")
    with open(folder / "meta.pkl", "wb") as f:  # nanoGPT reads its vocabulary size from it
        pickle.dump({"vocab_size": VOCAB}, f)


def shards_for_nanogpt(data: str, out: Path, budget: Budget) -> Path:
    """nanoGPT's copy of the tokens the gptcli runs trained on: the regions run's shards, or a
    one-step eager run's when that one did not run."""
    run_dir = RUNS / "gpu-regions"
    if not (run_dir / "data" / "manifest.json").exists():
        run_dir = RUNS / "gpu-nanogpt-data"
        sets = [*EQUAL_ARCH, "train.compile=off"]
        gptcli_pretrain(run_dir.name, data, 1, sets, budget.cap("nanogpt", 0.3), out)
    folder = out / "nanogpt-data"
    nanogpt_data(run_dir, folder)
    return folder


def nanogpt_times(log: str) -> list[tuple[int, float]]:
    """(iteration, milliseconds) of each `iter N: loss L, time T ms` line of nanoGPT's log."""
    found = re.findall(r"iter (\d+): loss \S+, time ([\d.]+)ms", log)
    return [(int(i), float(ms)) for i, ms in found]


def nanogpt_params(log: str) -> int:
    """Every parameter nanoGPT's optimizer holds (its decayed and non-decayed groups): its
    "number of parameters" line leaves out the position embedding."""
    found = re.findall(r"parameter tensors: \d+, with ([\d,]+) parameters", log)
    return sum(int(n.replace(",", "")) for n in found)


def check_nanogpt(data: str, nanogpt: Path, steps: int, out: Path, budget: Budget) -> dict:
    if not (nanogpt / "train.py").exists():
        raise Skipped(
            f"no nanoGPT checkout at {nanogpt}: git clone https://github.com/karpathy/nanoGPT "
            "there (or pass --nanogpt DIR); a machine without network needs it carried along"
        )
    folder = shards_for_nanogpt(data, out, budget)
    n_layer, n_head, n_embd = SHAPE_124M
    options = {
        "dataset": str(folder), **DEVICE["nanogpt"], "bias": True,
        "batch_size": BATCH, "block_size": BLOCK, "gradient_accumulation_steps": ACCUM,
        "n_layer": n_layer, "n_head": n_head, "n_embd": n_embd, "dropout": 0.0, "max_iters": steps,
        "lr_decay_iters": steps, "warmup_iters": 20, "eval_interval": 10**9, "eval_iters": 0,
        "log_interval": 1, "always_save_checkpoint": False, "wandb_log": False,
        "out_dir": str(out / "nanogpt-out"),
    }  # fmt: skip
    # eval_iters 0: its step-0 evaluation reads no batch, so iteration 0 is the compile and the
    # first step alone; log_interval 1 syncs every step, as gptcli's log_every=1 does
    args = [f"--{k}={v}" for k, v in options.items()]
    env = {**os.environ, **cache_env(fresh_cache(out, "nanogpt"))}
    code, stdout, stderr = run_capped(
        [sys.executable, "train.py", *args], nanogpt, env, budget.cap("nanogpt", 0.7)
    )
    (out / "nanogpt.log.txt").write_text(stdout[-200_000:] + stderr[-20_000:])
    times = nanogpt_times(stdout)
    if len(times) < 2:
        raise AssertionError(f"nanoGPT exited {code}: {stderr[-2000:]}")
    ms = statistics.median([t for i, t in times if i > 20] or [t for i, t in times if i > 0])
    rate = BATCH * BLOCK * ACCUM / (ms / 1000)
    device = torch.device(DEVICE["nanogpt"]["device"])
    peak, _ = peak_flops(device, torch.bfloat16 if device.type == "cuda" else None)
    return {
        "exit": code,
        "first_step_s": round(times[0][1] / 1000, 2),
        "tokens_per_s": round(rate, 1),
        "mfu": round(gpt2_flops_per_token(*SHAPE_124M) * rate / peak, 4),
        "steps_logged": len(times),
        "params": nanogpt_params(stdout),
    }


def check_ratio(results: dict) -> dict:
    ratio = against(results, "regions", "tokens_per_s", "nanogpt")
    if ratio is None:
        raise Skipped("gptcli's regions run or nanoGPT's gave no tokens/s")
    return {
        "gptcli_over_nanogpt": ratio,
        "whole_over_nanogpt": against(results, "whole", "tokens_per_s", "nanogpt"),
        "target": TARGET_RATIO,
        "met": ratio >= TARGET_RATIO,
        "equal_params": results["regions"].get("params") == results["nanogpt"].get("params"),
        "whole_over_regions": {
            "first_step": against(results, "whole", "first_step_s", "regions"),
            "tokens_per_s": against(results, "whole", "tokens_per_s", "regions"),
        },
    }


def check_fsdp(data: str, steps: int, out: Path, budget: Budget) -> dict:
    """FSDP2 on a 1-rank mesh, every block checkpointed then none; the regions run's inductor
    cache, so the block graph compiles warm."""
    cache = out / "inductor-regions"
    cache.mkdir(parents=True, exist_ok=True)
    rows = {}
    for share, checkpointing in ((0.5, "true"), (1.0, "false")):
        sets = [*EQUAL_ARCH, f"train.compile={DEVICE['compile']}", "train.parallel=fsdp",
                f"train.activation_checkpointing={checkpointing}"]  # fmt: skip
        name = f"gpu-fsdp-ac-{checkpointing}"
        try:
            rows[name] = gptcli_pretrain(
                name, data, steps, sets, budget.cap("fsdp", share), out, FSDP_1, cache_env(cache)
            )  # fmt: skip
        except AssertionError as e:
            rows[name] = {"error": str(e)[-1500:]}
    on, off = rows["gpu-fsdp-ac-true"], rows["gpu-fsdp-ac-false"]
    if "tokens_per_s" not in on:
        raise AssertionError(f"FSDP with activation checkpointing: {on}")
    return {
        "runs": rows,
        "checkpointing_tokens_per_s_ratio": against(
            rows, "gpu-fsdp-ac-true", "tokens_per_s", "gpu-fsdp-ac-false"
        ),  # fmt: skip
        "checkpointing_saves_gib": round(off["peak_allocated_gib"] - on["peak_allocated_gib"], 2)
        if "peak_allocated_gib" in on and "peak_allocated_gib" in off
        else None,
    }


def check_recipe(data: str, steps: int, out: Path, budget: Budget) -> dict:
    """The shipped 124M recipe (llama preset) at the same batch and accumulation."""
    cache = cache_env(fresh_cache(out, "recipe"))
    figures = gptcli_pretrain(
        "gpu-recipe", data, steps, [f"train.compile={DEVICE['compile']}"], budget.cap("recipe"),
        out, env=cache,
    )  # fmt: skip
    mfu = figures.get("mfu")
    return {**figures, "target_mfu": TARGET_MFU, "met": mfu is not None and mfu >= TARGET_MFU}


def check_ladder(data: str, steps: int, compile_: str, out: Path, budget: Budget) -> dict:
    rows = []
    for name, n_layer, n_head, n_embd in LADDER:
        row: dict = {"model": name}
        if budget.left() < PLAN["ladder"].expected_s:
            rows.append({**row, "skipped": f"{budget.left():.0f} s of the budget left"})
            continue
        sets = [f"model.n_layer={n_layer}", f"model.n_head={n_head}", f"model.n_embd={n_embd}",
                "model.preset=gpt2", "train.grad_accum=1", "train.activation_checkpointing=true",
                f"train.compile={compile_}"]  # fmt: skip
        try:
            row |= {"fits": True, **gptcli_pretrain(
                f"gpu-ladder-{name}", data, steps, sets, budget.cap("ladder"), out)}  # fmt: skip
        except AssertionError as e:
            row |= {"fits": False, "error": str(e)[-600:]}
        rows.append(row)
    return {"rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="text for the runs (a file or folder)")
    parser.add_argument("--nanogpt", default=str(ROOT / "build" / "nanoGPT"))
    parser.add_argument("--steps", type=int, default=100, help="steps of each 124M comparison")
    parser.add_argument("--fsdp-steps", type=int, default=40)
    parser.add_argument("--recipe-steps", type=int, default=60)
    parser.add_argument("--ladder-steps", type=int, default=20)
    parser.add_argument("--budget-s", type=float, default=440, help="the whole script's seconds")
    parser.add_argument("--out", default=".", help="folder for the report and the logs")
    parser.add_argument("--only", nargs="*", help="run only these checks", choices=list(PLAN))
    parser.add_argument(
        "--ladder-compile",
        default="off",
        choices=["on", "off"],
        help="compile the ladder's runs (each compile costs a minute or more)",
    )
    parser.add_argument("--smoke", action="store_true", help="toy sizes on the CPU")
    parser.add_argument("--compile", choices=["on", "off"], help="the compared runs' train.compile "
                        "and nanoGPT's compile (default on; off with --smoke)")  # fmt: skip
    args = parser.parse_args()
    if args.smoke:
        use_smoke_sizes()
    if args.compile:
        DEVICE["compile"] = args.compile
        DEVICE["nanogpt"]["compile"] = args.compile == "on"
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data, nanogpt = str(Path(args.data).resolve()), Path(args.nanogpt).resolve()
    budget = Budget(args.budget_s)
    print_plan(args, out)
    results: dict[str, dict] = {}
    checks = {
        "env": lambda: check_env(nanogpt, args.budget_s),
        "regions": lambda: check_compile("regions", data, args.steps, out, budget),
        "whole": lambda: check_compile("whole", data, args.steps, out, budget),
        "mfu": lambda: check_mfu(results),
        "nanogpt": lambda: check_nanogpt(data, nanogpt, args.steps, out, budget),
        "ratio": lambda: check_ratio(results),
        "fsdp": lambda: check_fsdp(data, args.fsdp_steps, out, budget),
        "recipe": lambda: check_recipe(data, args.recipe_steps, out, budget),
        "ladder": lambda: check_ladder(data, args.ladder_steps, args.ladder_compile, out, budget),
    }
    budgeted = {name: within(budget, name, check) for name, check in checks.items()}
    run_checks(budgeted, args.only, results, out / "gpu_ladder.jsonl", {"card": card()})


def within(budget: Budget, name: str, check):
    """check, skipped when the budget has less left than it is expected to take."""

    def run() -> dict:
        budget.start(name)
        return check()

    return run


def print_plan(args: argparse.Namespace, out: Path) -> None:
    """The budget, before anything runs: what each check is expected to take and its cap."""
    lines = [f"gpu_ladder: {card()}, budget {args.budget_s:.0f} s, report {out}/gpu_ladder.jsonl"]
    for name, plan in PLAN.items():
        if not args.only or name in args.only:
            lines.append(f"  {name:8} expected {plan.expected_s:4.0f} s, cap {plan.cap_s:4.0f} s")
    print("\n".join(lines), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
