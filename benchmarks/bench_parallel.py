"""DDP against FSDP on this CPU: 2 gloo ranks, a ~100M-parameter model, peak RSS per rank and
tokens/s of the training step (forward, backward, clip, fused AdamW) the trainer runs.

Each parallelism runs in its own `torchrun` (peak RSS is per process), on the same model and
batches; the first step (allocation, FSDP's lazy set-up) is not timed.

    python benchmarks/bench_parallel.py            # ~100M parameters, a couple of minutes
    python benchmarks/bench_parallel.py --quick    # a tiny model, to check that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from gptcli import optim, parallel
from gptcli.device import init_distributed
from gptcli.model import GPT
from gptcli.recipe import ModelConfig, TrainConfig
from gptcli.trainer import TaskStep

SIZES = {
    # 12 x 12 x 768^2 in the blocks + 16384 x 768 tied embedding: ~97.5M parameters
    "100m": dict(n_layer=12, n_head=12, n_embd=768, vocab_size=16384),
    "quick": dict(n_layer=2, n_head=2, n_embd=64, vocab_size=512),
}


class LM:
    def loss(self, model: GPT, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return model(*batch)[1]


def worker(kind: str, size: str, steps: int, batch: int, block: int) -> None:
    """One rank: train `steps` timed steps after one warm-up step; rank 0 prints a JSON line."""
    dist = init_distributed("cpu")
    torch.manual_seed(0)
    model = GPT(ModelConfig(block_size=block, **SIZES[size]))
    t = TrainConfig(batch_size=batch, parallel=kind, dtype="fp32")
    device = torch.device("cpu")
    chosen = parallel.choose(kind, model.num_params(), t.optimizer, dist, device)
    wrapper = parallel.wrap(chosen, TaskStep(model, LM()), list(model.blocks), dist, device, None)
    opts = optim.build_optimizers(model, t, device)
    gen = torch.Generator().manual_seed(dist.rank)
    vocab = model.cfg.vocab_size
    times = []
    for step in range(steps + 1):
        x = torch.randint(vocab, (batch, block), generator=gen)
        start = time.perf_counter()
        wrapper.module(x, x).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
        parallel.barrier(dist)
        if step:
            times.append(time.perf_counter() - start)
    rss = torch.tensor([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024])
    every = [torch.zeros(1) for _ in range(dist.world)]
    torch.distributed.all_gather(every, rss)
    if dist.main:
        tokens = batch * block * dist.world * steps
        print(
            json.dumps(
                {
                    "parallel": kind,
                    "params_m": round(model.num_params() / 1e6, 1),
                    "tokens_per_s": round(tokens / sum(times), 1),
                    "peak_rss_mb_per_rank": [round(r.item()) for r in every],
                }
            )
        )
    torch.distributed.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--worker", choices=["ddp", "fsdp"])
    args = ap.parse_args()
    size = "quick" if args.quick else "100m"
    if args.worker:
        worker(args.worker, size, args.steps, args.batch, args.block)
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    for kind in ("ddp", "fsdp"):
        cmd = [*launch, "2", str(Path(__file__).resolve()), "--worker", kind]
        cmd += ["--steps", str(args.steps), "--batch", str(args.batch), "--block", str(args.block)]
        if args.quick:
            cmd.append("--quick")
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            sys.exit(out.stderr[-3000:])
        print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
