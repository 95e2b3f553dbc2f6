"""How close `gptcli pretrain RECIPE --dry-run`'s time estimate comes to the real run, on CPU.

For each recipe (tiny, shakespeare, the 124M one) in a fresh folder with a fresh probe cache:
the plan first (`--dry-run --json`: seconds per step from its few timed steps), then a real
`gptcli pretrain` of a few steps with the same settings; the measured seconds per step are the
median of the logged windows after the first two (warm-up). Prints estimated vs measured seconds
per step and their ratio; the target is within 25 %. Both run on the CPU at micro-batch 1
(`--set train.device=cpu --set train.batch_size=1`), eager (`train.compile=off`: the plan times
eager steps, and a CPU compile would take most of the run), fp32 or whatever `dtype: auto` picks,
one micro-batch a step. Time it alone: another busy process slows torch many times over.

    python benchmarks/plan_accuracy.py                     # all three, 12 steps each
    python benchmarks/plan_accuracy.py --only tiny --steps 6
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"

COMMON = [
    "train.device=cpu",
    "train.batch_size=1",
    "train.grad_accum=1",
    "train.compile=off",
    "train.dtype=auto",
    "train.eval_every=0",
    "train.save_every=0",
    "train.log_every=1",
    "train.warmup_steps=1",
]
# each recipe with a local corpus (no network) and a fixed vocabulary, so the plan and the run
# build the same model
CASES = {
    "tiny": ("tiny", ["data.builtin_mb=1"]),
    "shakespeare": (
        "shakespeare",
        [f"data.source={SHARED / 'tinyshakespeare.txt'}", "data.sha256=", "model.vocab_size=1024"],
    ),
    "gpt2-124m": (
        "gpt2-124m",
        ["data.source=builtin:stories", "data.builtin_mb=1", "model.vocab_size=50304"],
    ),
}


def gptcli(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "gptcli", *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"gptcli {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout


def measure(name: str, steps: int) -> dict:
    recipe, extra = CASES[name]
    sets = [x for s in [*COMMON, *extra, f"train.max_steps={steps}"] for x in ("--set", s)]
    with tempfile.TemporaryDirectory(prefix="gptcli-plan-") as tmp:
        env = {**os.environ, "GPTCLI_CACHE": str(Path(tmp) / "cache"), "PYTHONPATH": str(REPO)}
        plan = json.loads(
            gptcli(["pretrain", recipe, *sets, "--dry-run", "--json", "-q"], Path(tmp), env)
        )
        summary = json.loads(gptcli(["pretrain", recipe, *sets, "--json", "-q"], Path(tmp), env))
        lines = (Path(tmp) / summary["run_dir"] / "metrics.jsonl").read_text().splitlines()
    rates = [r["tokens_per_s"] for r in map(json.loads, lines) if "tokens_per_s" in r]
    steady = rates[2:] or rates  # the first windows warm up
    measured = plan["tokens_per_step"] / statistics.median(steady)
    return {
        "recipe": name,
        "params": plan["params"]["total"],
        "dtype": plan["auto"]["dtype"],
        "estimated_s": plan["step_s"],
        "measured_s": round(measured, 4),
        "ratio": round(plan["step_s"] / measured, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=sorted(CASES), action="append", help="repeatable")
    parser.add_argument("--steps", type=int, default=12, help="training steps of each real run")
    args = parser.parse_args()
    print(
        f"{'recipe':<12} {'params':>12} {'dtype':>5} {'estimated s/step':>17} "
        f"{'measured s/step':>16} {'ratio':>6}  within 25 %"
    )
    for name in args.only or list(CASES):
        r = measure(name, args.steps)
        ok = "yes" if abs(r["ratio"] - 1) <= 0.25 else "no"
        print(
            f"{r['recipe']:<12} {r['params']:>12,} {r['dtype']:>5} {r['estimated_s']:>17.4f} "
            f"{r['measured_s']:>16.4f} {r['ratio']:>6.3f}  {ok}",
            flush=True,
        )


if __name__ == "__main__":
    main()
