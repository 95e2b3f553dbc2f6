"""GPU speed against nanoGPT, and the model sizes one GPU trains: one script for a GPU session.

One JSON line per check on stdout (and in --out/gpu_ladder.jsonl), each with "ok":
  gptcli    `gptcli pretrain recipes/gpt2-124m.yaml --set model.preset=gpt2` (GPT-2's own
            architecture, as nanoGPT's) on --data for --steps steps: tokens/s and MFU
  nanogpt   nanoGPT's train.py (compile=True, bf16, the same shape, batch and accumulation) on
            the same token shards (gptcli's uint16 train.bin/val.bin with a meta.pkl), the same
            GPU: tokens/s, and MFU by gptcli's FLOPs formula against the same peak
  ratio     gptcli tokens/s over nanoGPT's
  ladder    GPT-2 shapes at a 1024 context, bf16, compile, every block checkpointed: whether
            each fits, tokens/s, MFU, the memory estimate and the measured peak (memory.json)

    git clone https://github.com/karpathy/nanoGPT build/nanoGPT   # build/ is git-ignored
    python benchmarks/gpu_ladder.py --data ../shared/data/tinystories --out DIR

The GPU machine has no network: carry build/nanoGPT along. Everything here runs in about 8
minutes on one H100/H200 with the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cuda_check import run_checks  # noqa: E402  (benchmarks/ is this script's folder)

from gptcli.data import shards  # noqa: E402
from gptcli.device import peak_flops  # noqa: E402
from gptcli.model import GPT  # noqa: E402
from gptcli.recipe import PRESETS, ModelConfig  # noqa: E402

VOCAB, BLOCK, BATCH, ACCUM = 50304, 1024, 16, 4
# (name, n_layer, n_head, n_embd): GPT-2 small, medium and large
LADDER = [("124M", 12, 12, 768), ("350M", 24, 16, 1024), ("774M", 36, 20, 1280)]
SHAPE_124M = (12, 12, 768)
LADDER_COMPILE = "off"
# --smoke: the same plumbing on this CPU at toy sizes, so a one-shot GPU session finds no typo
DEVICE = {"gptcli": [], "nanogpt": {"device": "cuda", "compile": True, "dtype": "bfloat16"}}


def use_smoke_sizes() -> None:
    global VOCAB, BLOCK, BATCH, ACCUM, LADDER, SHAPE_124M
    VOCAB, BLOCK, BATCH, ACCUM = 512, 64, 4, 2
    LADDER = [("tiny", 2, 2, 64), ("small", 3, 2, 96)]
    SHAPE_124M = (2, 2, 64)
    DEVICE["gptcli"] = ["train.device=cpu", "train.dtype=fp32", "train.compile=off",
                        "model.n_layer=2", "model.n_head=2", "model.n_embd=64"]  # fmt: skip
    DEVICE["nanogpt"] = {"device": "cpu", "compile": False, "dtype": "float32"}


def gpt2_flops_per_token(n_layer: int, n_head: int, n_embd: int) -> int:
    cfg = ModelConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=BLOCK,
                      vocab_size=VOCAB, **PRESETS["gpt2"])  # fmt: skip
    with torch.device("meta"):
        return GPT(cfg).flops_per_token()


def gptcli_pretrain(name: str, data: str, steps: int, extra: list[str], timeout: float):
    sets = [
        f"name={name}", f"data.source={data}", "data.val_fraction=0.02", "model.preset=gpt2",
        f"model.vocab_size={VOCAB}", f"tokenizer.vocab_size={VOCAB}", f"model.block_size={BLOCK}",
        f"train.max_steps={steps}", f"train.batch_size={BATCH}",
        "train.warmup_steps=20", "train.eval_every=0", "train.save_every=0",
        "train.eval_batches=2", "train.log_every=5", *DEVICE["gptcli"], *extra,
    ]  # fmt: skip
    args = ["pretrain", "recipes/gpt2-124m.yaml", "--fresh", "--json"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "gptcli", *args, *[a for s in sets for a in ("--set", s)]],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def steady(records: list[dict], key: str) -> float:
    """The median of key past compile and warm-up."""
    values = [r[key] for r in records if r["step"] > 20 and key in r]
    return statistics.median(values or [r[key] for r in records if key in r])


def check_gptcli(data: str, steps: int, out: Path) -> dict:
    proc = gptcli_pretrain("ladder-gptcli", data, steps, [f"train.grad_accum={ACCUM}"], 300)
    (out / "gptcli_stderr.txt").write_text(proc.stderr[-200_000:])
    if proc.returncode != 0:
        raise AssertionError(f"pretrain exited {proc.returncode}: {proc.stderr[-2000:]}")
    run_dir = Path(json.loads(proc.stdout.strip().splitlines()[-1])["run_dir"])
    run_dir = run_dir if run_dir.is_absolute() else ROOT / run_dir
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {
        "run_dir": str(run_dir),
        "tokens_per_s": steady(records, "tokens_per_s"),
        "mfu": steady(records, "mfu"),
        "memory": json.loads((run_dir / "memory.json").read_text()),
    }


def nanogpt_data(run_dir: Path, nanogpt: Path) -> None:
    """gptcli's shards as nanoGPT's train.bin/val.bin (uint16) and meta.pkl."""
    manifest = json.loads((run_dir / "data" / "manifest.json").read_text())
    folder = nanogpt / "data" / "gptcli"
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        ids = np.asarray(shards.load_shard(run_dir, split, manifest))
        ids.astype(np.uint16).tofile(folder / f"{split}.bin")
    with open(folder / "meta.pkl", "wb") as f:  # nanoGPT reads its vocabulary size from it
        pickle.dump({"vocab_size": VOCAB}, f)


def check_nanogpt(run_dir: str, nanogpt: Path, steps: int, out: Path) -> dict:
    nanogpt_data(Path(run_dir), nanogpt)
    n_layer, n_head, n_embd = SHAPE_124M
    options = {
        "dataset": "gptcli", **DEVICE["nanogpt"], "bias": True,
        "batch_size": BATCH, "block_size": BLOCK, "gradient_accumulation_steps": ACCUM,
        "n_layer": n_layer, "n_head": n_head, "n_embd": n_embd, "dropout": 0.0, "max_iters": steps,
        "lr_decay_iters": steps, "warmup_iters": 20, "eval_interval": 10**9, "eval_iters": 1,
        "log_interval": 5, "always_save_checkpoint": False, "wandb_log": False,
        "out_dir": str(out / "nanogpt-out"),
    }  # fmt: skip
    args = [f"--{k}={v}" for k, v in options.items()]
    proc = subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=nanogpt, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    (out / "nanogpt_stdout.txt").write_text(proc.stdout[-200_000:] + proc.stderr[-20_000:])
    times = [
        (int(i), float(ms))
        for i, ms in re.findall(r"iter (\d+): loss [\d.]+, time ([\d.]+)ms", proc.stdout)
    ]
    if not times:
        raise AssertionError(f"nanoGPT exited {proc.returncode}: {proc.stderr[-2000:]}")
    ms = statistics.median([t for i, t in times if i > 20] or [t for _, t in times])
    rate = BATCH * BLOCK * ACCUM / (ms / 1000)
    device = torch.device(DEVICE["nanogpt"]["device"])
    peak, _ = peak_flops(device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    return {
        "tokens_per_s": round(rate, 1),
        "mfu": round(gpt2_flops_per_token(*SHAPE_124M) * rate / peak, 4),
        "exit": proc.returncode,
    }


def check_ladder(data: str, steps: int) -> dict:
    rows = []
    for name, n_layer, n_head, n_embd in LADDER:
        sets = [f"model.n_layer={n_layer}", f"model.n_head={n_head}", f"model.n_embd={n_embd}",
                "train.grad_accum=1", "train.activation_checkpointing=true",
                f"train.compile={LADDER_COMPILE}"]  # fmt: skip
        start = time.perf_counter()
        proc = gptcli_pretrain(f"ladder-{name}", data, steps, sets, 240)
        row: dict = {"model": name, "fits": proc.returncode == 0}
        if proc.returncode == 0:
            run_dir = Path(json.loads(proc.stdout.strip().splitlines()[-1])["run_dir"])
            run_dir = run_dir if run_dir.is_absolute() else ROOT / run_dir
            lines = (run_dir / "metrics.jsonl").read_text().splitlines()
            records = [json.loads(line) for line in lines]
            report = json.loads((run_dir / "memory.json").read_text())
            row |= {
                "tokens_per_s": steady(records, "tokens_per_s"),
                "mfu": steady(records, "mfu"),
                "estimate_gib": round(report["total"] / 2**30, 2),
                "peak_allocated_gib": round(report.get("peak_allocated", 0) / 2**30, 2),
            }
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            row["error"] = proc.stderr.strip().splitlines()[-1:] if proc.stderr else proc.returncode
        row["seconds"] = round(time.perf_counter() - start, 1)
        rows.append(row)
    return {"rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="text for the runs (a file or folder)")
    parser.add_argument("--nanogpt", default=str(ROOT / "build" / "nanoGPT"))
    parser.add_argument("--steps", type=int, default=200, help="steps of each 124M comparison")
    parser.add_argument("--ladder-steps", type=int, default=25)
    parser.add_argument("--out", default=".", help="folder for the report and the logs")
    parser.add_argument("--only", nargs="*", help="run only these checks")
    parser.add_argument(
        "--ladder-compile",
        default="off",
        choices=["on", "off"],
        help="compile the ladder's runs (each compile costs a minute or more)",
    )
    parser.add_argument("--smoke", action="store_true", help="toy sizes on the CPU")
    args = parser.parse_args()
    global LADDER_COMPILE
    LADDER_COMPILE = args.ladder_compile
    if args.smoke:
        use_smoke_sizes()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = str(Path(args.data).resolve())
    results: dict[str, dict] = {}
    checks = {
        "gptcli": lambda: check_gptcli(data, args.steps, out),
        "nanogpt": lambda: check_nanogpt(
            results["gptcli"]["run_dir"], Path(args.nanogpt), args.steps, out
        ),
        "ratio": lambda: {
            "gptcli_over_nanogpt": round(
                results["gptcli"]["tokens_per_s"] / results["nanogpt"]["tokens_per_s"], 3
            )
        },
        "ladder": lambda: check_ladder(data, args.ladder_steps),
    }
    run_checks(checks, args.only, results, out / "gpu_ladder.jsonl")


if __name__ == "__main__":
    main()
