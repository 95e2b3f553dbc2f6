"""Training tokens/s of the tiny recipe's model alone and beside one CPU-bound process.

Each setting runs in a fresh process (OpenMP reads its environment when torch loads), first
alone, then with a `python -c 'while True: pass'` burner on the machine; the ratio of the two
is what the setting keeps under contention. Prints the load average before each pair, since
other processes on the machine count as contention too.

    python benchmarks/contention.py             # every setting, 30 timed steps each (--steps N)
    python benchmarks/contention.py --quick     # a few steps, to check that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

# name: (environment, torch threads; None = torch's default)
SETTINGS = {
    "default": ({}, None),
    "OMP_WAIT_POLICY=PASSIVE": ({"OMP_WAIT_POLICY": "PASSIVE"}, None),
    "GOMP_SPINCOUNT=0": ({"GOMP_SPINCOUNT": "0"}, None),
    "KMP_BLOCKTIME=0": ({"KMP_BLOCKTIME": "0"}, None),
    "1 thread": ({}, 1),
}

WORKER = """
import json, sys, time
import torch
from gptcli.model import GPT
from gptcli.recipe import PRESETS, ModelConfig
threads, steps = json.loads(sys.argv[1])
if threads:
    torch.set_num_threads(threads)
torch.manual_seed(0)
cfg = ModelConfig(n_layer=4, n_head=4, n_embd=192, block_size=256, vocab_size=2048,
                  **PRESETS["llama"])
model = GPT(cfg)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
x = torch.randint(0, 2048, (8, 257))
def step():
    loss = model(x[:, :-1], x[:, 1:])[1]
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
for _ in range(3):
    step()
start = time.perf_counter()
for _ in range(steps):
    step()
print(json.dumps({"tps": steps * 8 * 256 / (time.perf_counter() - start),
                  "threads": torch.get_num_threads()}))
"""


def measure(env: dict, threads: int | None, steps: int) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, json.dumps([threads, steps])],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps only")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    args = parser.parse_args()
    steps = 3 if args.quick else args.steps
    print(f"{os.cpu_count()} CPUs; tiny recipe's model, fp32, batch 8 x 256, {steps} steps")
    print("| setting | threads | load avg | alone tok/s | + 1 burner tok/s | kept |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, (env, threads) in SETTINGS.items():
        load = os.getloadavg()[0]
        alone = measure(env, threads, steps)
        burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            time.sleep(0.5)
            busy = measure(env, threads, steps)
        finally:
            burner.kill()
            burner.wait()
        print(
            f"| {name} | {alone['threads']} | {load:.1f} | {alone['tps']:,.0f} | "
            f"{busy['tps']:,.0f} | {busy['tps'] / alone['tps']:.2f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
