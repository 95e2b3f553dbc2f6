"""Where an eager training step goes: gptcli's against nanoGPT's, per op category.

The step is bench_train.py's (same configs, batches, fused AdamW, clip 1.0), profiled with
torch.profiler on the CPU; each op's self CPU time lands in one category (matmuls, attention,
norms, activation, loss, dtype casts, other elementwise, clip + optimizer, the rest), shown as
a share of the step. The matmul floor is the step's matmuls alone: every (op, shapes, dtype) the
step ran, timed by itself on fresh contiguous inputs, summed over the step's calls; the step's
distance from it is what anything but a faster matmul could win.

    python benchmarks/profile_train.py                      # configs a and b, fp32 and bf16
    python benchmarks/profile_train.py --configs b --precisions bf16 --steps 3 --threads 1
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import (  # noqa: E402
    CONFIGS,
    PRECISIONS,
    gptcli_model,
    nanogpt_dir,
    nanogpt_factory,
)

from gptcli.device import keep_freed_memory  # noqa: E402
from gptcli.optim import param_groups  # noqa: E402

MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::_addmm_activation")
CATEGORIES = (
    "matmuls",
    "attention",
    "norms",
    "activation",
    "loss",
    "casts, copies",
    "elementwise",
    "clip + optimizer",
    "other (autograd, Python)",
)


GROUPS = (  # an op belongs to the first group a keyword of which names it or an op around it
    ("attention", ("attention",)),
    ("loss", ("crossentropy", "cross_entropy", "nll_loss", "softmax")),
    ("norms", ("norm",)),
    ("activation", ("gelu", "silu", "relu")),
)
PHASES = ("forward", "backward", "clip", "optimizer")


def enclosing(event) -> list[str]:
    """Lower-case names of the event and of the ops and phases it ran inside, innermost first."""
    names = []
    while event is not None:
        names.append(event.name.lower())
        event = event.cpu_parent
    return names


def category(event) -> str:
    """The category of an op: by its name, the op it ran inside, and the step's phase."""
    names = enclosing(event)
    if "clip" in names or "optimizer" in names:
        return "clip + optimizer"
    if event.name in MATMULS:
        return "matmuls"
    for group, keys in GROUPS:
        if any(k in n for n in names for k in keys):
            return group
    if event.name in ("aten::_to_copy", "aten::to", "aten::copy_"):
        return "casts, copies"
    if event.name.startswith("aten::"):
        return "elementwise"
    return "other (autograd, Python)"


def matmul_flops(name: str, shapes: list) -> int:
    """2 M K N (times the batch) of a matmul op from its recorded input shapes."""
    if name == "aten::bmm":
        (b, m, k), (_, _, n) = shapes[0], shapes[1]
        return 2 * b * m * k * n
    a, w = (shapes[1], shapes[2]) if name != "aten::mm" else (shapes[0], shapes[1])
    return 2 * a[0] * a[1] * w[1]


ALONE: dict[tuple, float] = {}


def time_alone(name: str, shapes: list, dtype: torch.dtype, reps: int = 30) -> float:
    """Fastest seconds of one matmul op on fresh contiguous inputs of the given shapes (the
    fastest, as a floor; remembered, so every engine is held to the same one)."""
    key = (name, str(shapes), dtype)
    if key not in ALONE:
        args = [torch.randn(s, dtype=dtype) for s in shapes if s]
        op = {"aten::mm": torch.mm, "aten::bmm": torch.bmm}.get(name, torch.addmm)
        for _ in range(3):
            op(*args)
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            op(*args)
            times.append(time.perf_counter() - start)
        ALONE[key] = min(times)
    return ALONE[key]


def instrumented(model: torch.nn.Module, opt: torch.optim.Optimizer):
    """bench_train.make_step's step (forward, backward, clip, optimizer) with each phase
    marked by record_function, so every op can be told by the phase it ran in."""

    def step(x, y, amp):
        ctx = torch.autocast("cpu", dtype=amp) if amp else torch.autocast("cpu", enabled=False)
        with record_function("forward"), ctx:
            loss = model(x, y)[1]  # gptcli and nanoGPT both return (logits, loss)
        with record_function("backward"):
            loss.backward()
        with record_function("clip"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        with record_function("optimizer"):
            opt.step()
            opt.zero_grad(set_to_none=True)

    return step


def profile_engine(build, c: dict, amp, steps: int) -> dict:
    """Category shares of the step, its profiled seconds and its matmul floor."""
    torch.manual_seed(0)
    model = build(c)
    optim = torch.optim.AdamW(
        param_groups(model.parameters(), 0.1), lr=1e-3, betas=(0.9, 0.95), fused=True
    )
    step = instrumented(model, optim)
    torch.manual_seed(0)
    x = torch.randint(0, c["vocab"], (c["batch"], c["block_size"] + 1))
    batch = (x[:, :-1].contiguous(), x[:, 1:].contiguous())
    for _ in range(3):
        step(*batch, amp)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step(*batch, amp)
        wall = (time.perf_counter() - start) / steps
    per_cat: dict[str, float] = defaultdict(float)
    mm_calls: dict[tuple, int] = defaultdict(int)
    for e in prof.events():
        if e.name in PHASES:
            continue
        per_cat[category(e)] += e.self_cpu_time_total / 1e6 / steps
        if e.name in MATMULS and e.input_shapes:
            key = (e.name, tuple(tuple(s) for s in e.input_shapes if s))
            mm_calls[key] += 1
    per_cat["other (autograd, Python)"] += max(wall - sum(per_cat.values()), 0.0)
    floor = flops = 0.0
    dtype = amp or torch.float32  # autocast runs every matmul in its dtype
    for (name, shapes), count in mm_calls.items():
        shapes = [list(s) for s in shapes]
        if name != "aten::mm" and name != "aten::bmm" and len(shapes) == 2:
            continue  # an addmm recorded without its bias shape: skip rather than guess
        floor += count / steps * time_alone(name, shapes, dtype)
        flops += count / steps * matmul_flops(name, shapes)
    return {"wall": wall, "cats": dict(per_cat), "floor": floor, "flops": flops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="ab")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--steps", type=int, default=5, help="profiled steps per engine")
    parser.add_argument("--nanogpt", help="a nanoGPT checkout (default: $NANOGPT_DIR)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = nanogpt_dir(args.nanogpt)
    engines = {"gptcli": gptcli_model}
    if folder is not None and (folder / "model.py").is_file():
        engines["nanoGPT"] = nanogpt_factory(folder)
    keep_freed_memory()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    head = " | ".join(CATEGORIES)
    print(f"| config | precision | engine | step ms (profiled) | {head} | matmul floor ms |")
    print("| --- | --- | --- | ---: |" + " ---: |" * (len(CATEGORIES) + 1))
    for name in args.configs:
        for label in args.precisions.split(","):
            for engine, build in engines.items():
                r = profile_engine(build, CONFIGS[name], PRECISIONS[label], args.steps)
                total = sum(r["cats"].values())
                shares = [f"{100 * r['cats'].get(k, 0.0) / total:.0f} %" for k in CATEGORIES]
                floor = (
                    f"{1000 * r['floor']:.1f} ({r['floor'] / r['wall']:.0%} of the step, "
                    f"{r['flops'] / r['floor'] / 1e9:.0f} GFLOP/s)"
                )
                print(
                    f"| ({name}) | {label} | {engine} | {1000 * r['wall']:.1f} | "
                    + " | ".join(shares)
                    + f" | {floor} |"
                )


if __name__ == "__main__":
    main()
