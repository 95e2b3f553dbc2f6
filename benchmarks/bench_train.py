"""Training throughput of gptcli's model against HF transformers' GPT2LMHeadModel.

Same shapes, same optimizer (fused AdamW, lr 1e-3, weight decay 0.1), same step (forward, backward,
clip to 1.0, optimizer step); timed windows of the two alternate in one process so machine noise
hits both alike. Prints tokens/s and the ratio per configuration, then a bf16-vs-fp32 loss-curve
check (gptcli with bf16 autocast against itself in fp32 on the same batches).

    python benchmarks/bench_train.py            # configs (a) and (b), fp32 and bf16
    python benchmarks/bench_train.py --quick    # a few steps, to check that it runs
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from pathlib import Path

import torch

from gptcli.model import GPT
from gptcli.optim import param_groups
from gptcli.recipe import PRESETS, ModelConfig

CONFIGS = {
    "a": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch=12, vocab=65),
    "b": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch=16, vocab=4096),
}
SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"


def gptcli_model(c: dict) -> GPT:
    cfg = ModelConfig(
        n_layer=c["n_layer"], n_head=c["n_head"], n_embd=c["n_embd"],
        block_size=c["block_size"], vocab_size=c["vocab"], **PRESETS["gpt2"],
    )  # fmt: skip
    return GPT(cfg)


def hf_model(c: dict) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=c["vocab"], n_positions=c["block_size"], n_embd=c["n_embd"],
        n_layer=c["n_layer"], n_head=c["n_head"], resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, activation_function="gelu_new", bos_token_id=None, eos_token_id=None,
    )  # fmt: skip
    return GPT2LMHeadModel(cfg)


def make_step(model: torch.nn.Module, is_hf: bool, amp: torch.dtype | None):
    # fused: what gptcli's trainer builds, and HF Trainer's default (adamw_torch_fused)
    opt = torch.optim.AdamW(
        param_groups(model.parameters(), 0.1), lr=1e-3, betas=(0.9, 0.95), fused=True
    )

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        device = next(model.parameters()).device.type  # cuda_check.py steps these on a GPU
        ctx = torch.autocast(device, dtype=amp) if amp else contextlib.nullcontext()
        with ctx:
            loss = model(input_ids=x, labels=x).loss if is_hf else model(x, y)[1]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def throughput(c: dict, windows: int, steps: int, gptcli_amp: torch.dtype | None) -> tuple:
    torch.manual_seed(0)
    x = torch.randint(0, c["vocab"], (c["batch"], c["block_size"] + 1))
    inputs, targets = x[:, :-1], x[:, 1:]
    runners = {
        "gptcli": make_step(gptcli_model(c), False, gptcli_amp),
        "hf": make_step(hf_model(c), True, None),
    }
    for run in runners.values():  # warm up (allocator, oneDNN kernels)
        for _ in range(2):
            run(inputs, targets)
    rates: dict[str, list[float]] = {name: [] for name in runners}
    tokens = c["batch"] * c["block_size"] * steps
    for _ in range(windows):
        for name, run in runners.items():
            start = time.perf_counter()
            for _ in range(steps):
                loss = run(inputs, targets)
            float(loss)
            rates[name].append(tokens / (time.perf_counter() - start))
    return statistics.median(rates["gptcli"]), statistics.median(rates["hf"])


def loss_curve(c: dict, steps: int, amp: torch.dtype | None) -> list[float]:
    """Train on Tiny Shakespeare characters (config a's vocabulary) from a fixed init."""
    text = SHAKESPEARE.read_text()
    chars = sorted(set(text))
    data = torch.tensor([chars.index(ch) for ch in text[:200_000]], dtype=torch.long)
    torch.manual_seed(0)
    model = gptcli_model({**c, "vocab": len(chars)})
    step = make_step(model, False, amp)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(steps):
        starts = torch.randint(len(data) - c["block_size"] - 1, (c["batch"],), generator=g)
        rows = torch.stack([data[s : s + c["block_size"] + 1] for s in starts])
        losses.append(float(step(rows[:, :-1], rows[:, 1:])))
    return losses


def compile_vs_eager(c: dict, steps: int) -> None:
    """Is torch.compile worth it on this CPU? Its one-off compile time against the steps saved."""
    x = torch.randint(0, c["vocab"], (c["batch"], c["block_size"] + 1))
    for label in ("eager", "compiled"):
        torch.manual_seed(0)
        model = gptcli_model(c)
        runner = torch.compile(model) if label == "compiled" else model
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        start = time.perf_counter()
        for i in range(steps + 1):
            if i == 1:
                first, start = time.perf_counter() - start, time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = runner(x[:, :-1], x[:, 1:])[1]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        rate = steps * c["batch"] * c["block_size"] / (time.perf_counter() - start)
        print(f"(b) bf16 {label:>9}: first step {first:6.1f} s, then {rate:,.0f} tokens/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps only")
    parser.add_argument(
        "--compile", action="store_true", help="also time torch.compile against eager at (b)"
    )
    args = parser.parse_args()
    if args.compile:
        compile_vs_eager(CONFIGS["b"], steps=5 if args.quick else 40)
        return
    windows, steps = (1, 2) if args.quick else (6, 5)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'config':<8}{'gptcli':>10}{'gptcli tok/s':>15}{'HF fp32 tok/s':>16}{'ratio':>8}")
    for name, c in CONFIGS.items():
        for label, amp in (("fp32", None), ("bf16", torch.bfloat16)):
            if name == "a" and amp is not None:
                continue
            ours, hf = throughput(c, windows, steps, amp)
            print(f"{name:<8}{label:>10}{ours:>15,.0f}{hf:>16,.0f}{ours / hf:>7.2f}x")
    curve_steps = 20 if args.quick else 300
    fp32 = loss_curve(CONFIGS["a"], curve_steps, None)
    bf16 = loss_curve(CONFIGS["a"], curve_steps, torch.bfloat16)
    tail = max(1, curve_steps // 10)
    mean32 = sum(fp32[-tail:]) / tail
    mean16 = sum(bf16[-tail:]) / tail
    worst = max(abs(a - b) / a for a, b in zip(fp32, bf16, strict=True))
    print(
        f"loss curve, config (a) on Tiny Shakespeare, {curve_steps} steps: "
        f"fp32 {mean32:.4f} vs bf16 {mean16:.4f} over the last {tail} steps "
        f"({abs(mean16 - mean32) / mean32:.2%} apart; largest single-step gap {worst:.2%})"
    )


if __name__ == "__main__":
    main()
