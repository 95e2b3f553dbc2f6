"""CUDA checks for a session that has a GPU: what the CPU-only test suite cannot see.

One JSON line per check on stdout (and in --out/cuda_check.jsonl), each with "ok":
  env        torch, the device, bf16 support and the peak MFU is measured against
  flash      a training step of the model runs with SDPA restricted to the flash kernel
  compile    torch.compile gives eager's loss and gradients (chunked loss, RMSNorm, rope)
  speed      GPT-2-124M-shaped training steps, gptcli (llama preset) against HF GPT2LMHeadModel
             (sdpa attention), both eager bf16 autocast with fused AdamW, interleaved windows
  pretrain   `gptcli pretrain recipes/gpt2-124m.yaml` (bf16, compile) for --steps steps on
             --data: tokens/s and MFU from its metrics.jsonl
  sample     `gptcli sample` on that run, on the GPU
  oom        an oversized batch gives exit 2 and one line naming batch_size/grad_accum

    python benchmarks/cuda_check.py --data stories.txt --steps 300 --out DIR
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gptcli.device import peak_flops  # noqa: E402
from gptcli.model import GPT  # noqa: E402
from gptcli.recipe import PRESETS, ModelConfig  # noqa: E402

CUDA = torch.device("cuda")
BF16 = torch.bfloat16


def small_model(preset: str = "llama", **kw) -> GPT:
    torch.manual_seed(0)
    shape = dict(n_layer=2, n_head=4, n_embd=256, block_size=512, vocab_size=1024)
    return GPT(ModelConfig(**{**shape, **PRESETS[preset], **kw})).to(CUDA)


def check_env() -> dict:
    peak, source = peak_flops(CUDA, BF16)
    return {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(),
        "capability": ".".join(map(str, torch.cuda.get_device_capability())),
        "bf16": torch.cuda.is_bf16_supported(),
        "peak_tflops_bf16": peak / 1e12 if peak else None,
        "peak_source": source,
    }


def check_flash() -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    for preset in ("llama", "gpt2"):
        model = small_model(preset)
        x = torch.randint(0, 1024, (4, 513), device=CUDA)
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]), torch.autocast("cuda", dtype=BF16):
            loss = model(x[:, :-1], x[:, 1:])[1]
        loss.backward()  # raises "No available kernel" if the flash path cannot take the call
    return {"presets": ["llama", "gpt2"]}


def _loss_and_grads(model: torch.nn.Module, params, x, amp) -> tuple[float, list[torch.Tensor]]:
    ctx = torch.autocast("cuda", dtype=amp) if amp else contextlib.nullcontext()
    with ctx:
        loss = model(x[:, :-1], x[:, 1:])[1]
    grads = torch.autograd.grad(loss, params)
    return loss.item(), [g.float() for g in grads]


def check_compile() -> dict:
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 compared exactly
    try:
        return _compare_compiled_with_eager()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def _compare_compiled_with_eager() -> dict:
    out = {}
    for label, amp, tol in (("fp32", None, 1e-4), ("bf16", BF16, 2e-2)):
        eager = small_model()
        params = list(eager.parameters())
        x = torch.randint(0, 1024, (8, 513), device=CUDA)  # 8 x 512 x 1024 logits: chunked path
        loss_e, grads_e = _loss_and_grads(eager, params, x, amp)
        loss_c, grads_c = _loss_and_grads(torch.compile(eager), params, x, amp)
        grad_err = max(
            ((a - b).norm() / b.norm().clamp_min(1e-12)).item()
            for a, b in zip(grads_c, grads_e, strict=True)
        )
        loss_err = abs(loss_c - loss_e) / abs(loss_e)
        out[label] = {"loss_rel_err": loss_err, "grad_rel_err": grad_err}
        if not (loss_err < tol and grad_err < 10 * tol):
            raise AssertionError(f"compiled {label} differs from eager: {out[label]}")
    return out


GPT2_124M = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, batch=16, vocab=50304)


def check_speed(shape: dict = GPT2_124M, windows: int = 3, steps: int = 10) -> dict:
    from bench_train import hf_model, make_step  # bench_train's models and step, on the GPU

    batch, block, vocab = shape["batch"], shape["block_size"], shape["vocab"]
    torch.manual_seed(0)
    dims = {k: shape[k] for k in ("n_layer", "n_head", "n_embd", "block_size")}
    gptcli = GPT(ModelConfig(**dims, vocab_size=vocab, **PRESETS["llama"])).to(CUDA)
    hf = hf_model(shape).to(CUDA)  # sdpa attention: transformers' default
    x = torch.randint(0, vocab, (batch, block + 1), device=CUDA)
    inputs, targets = x[:, :-1], x[:, 1:]
    runners = {"gptcli": make_step(gptcli, "gptcli", BF16), "hf": make_step(hf, "hf", BF16)}
    for run in runners.values():
        for _ in range(3):
            run(inputs, targets)
    torch.cuda.synchronize()
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(windows):
        for name, run in runners.items():
            start = time.perf_counter()
            for _ in range(steps):
                run(inputs, targets)
            torch.cuda.synchronize()
            rates[name].append(batch * block * steps / (time.perf_counter() - start))
    ours, theirs = statistics.median(rates["gptcli"]), statistics.median(rates["hf"])
    peak, _ = peak_flops(CUDA, BF16)
    return {
        "gptcli_tokens_per_s": round(ours),
        "hf_tokens_per_s": round(theirs),
        "ratio": round(ours / theirs, 3),
        "gptcli_eager_mfu": round(gptcli.flops_per_token() * ours / peak, 3),
        "gptcli_params_m": round(gptcli.num_params() / 1e6, 1),
        "hf_params_m": round(hf.num_parameters() / 1e6, 1),
    }


def gptcli_cli(*args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "gptcli", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def check_pretrain(data: str, steps: int, out: Path) -> dict:
    proc = gptcli_cli(
        "pretrain", "recipes/gpt2-124m.yaml", "--fresh", "--json",
        "--set", "name=gpt2-124m-check", "--set", f"data.source={data}",
        "--set", "data.val_fraction=0.02", "--set", "model.vocab_size=50304",
        "--set", f"train.max_steps={steps}", "--set", "train.grad_accum=4",
        "--set", "train.warmup_steps=50", "--set", "train.eval_every=0",
        "--set", "train.save_every=0", "--set", "train.eval_batches=10",
        timeout=420,
    )  # fmt: skip
    (out / "pretrain_stderr.txt").write_text(proc.stderr[-200_000:])
    if proc.returncode != 0:
        raise AssertionError(f"pretrain exited {proc.returncode}: {proc.stderr[-2000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    run_dir = Path(summary["run_dir"])
    (out / "metrics.jsonl").write_text((run_dir / "metrics.jsonl").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steady = [r for r in records if r["step"] > 20 and "mfu" in r]  # past compile and warm-up
    return {
        "run_dir": str(run_dir),
        "train_header": next(
            (ln for ln in proc.stderr.splitlines() if "parameters" in ln and "train:" in ln), ""
        ),
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steady),
        "mfu": statistics.median(r["mfu"] for r in steady),
        "first_log": records[0],
        "summary": summary,
    }


def check_sample(run_dir: str) -> dict:
    proc = gptcli_cli(
        "sample", "-c", run_dir, "--prompt", "Once upon a time", "--max-new-tokens", "60",
        "--temperature", "0.8", "--seed", "1",
        timeout=120,
    )  # fmt: skip
    if proc.returncode != 0 or not proc.stdout.strip():
        raise AssertionError(f"sample exited {proc.returncode}: {proc.stderr[-2000:]}")
    return {"text": proc.stdout[:600], "stderr_tail": proc.stderr[-300:]}


def check_oom(data: str) -> dict:
    proc = gptcli_cli(
        "pretrain", "recipes/gpt2-124m.yaml", "--fresh",
        "--set", "name=gpt2-124m-oom", "--set", f"data.source={data}",
        "--set", "train.batch_size=1024", "--set", "train.compile=off",
        "--set", "train.max_steps=1", "--set", "model.vocab_size=50304",
        timeout=300,
    )  # fmt: skip
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    ok = (
        proc.returncode == 2
        and "Traceback" not in proc.stderr
        and any("out of memory" in ln and "grad_accum" in ln for ln in lines)
    )
    if not ok:
        raise AssertionError(f"exit {proc.returncode}, stderr: {proc.stderr[-2000:]}")
    return {"exit": proc.returncode, "message": lines[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a text file for the 124M run")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", default=".", help="folder for the report and the run's metrics")
    parser.add_argument("--only", nargs="*", help="run only these checks")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = str(Path(args.data).resolve())
    results: dict[str, dict] = {}
    checks = {
        "env": check_env,
        "flash": check_flash,
        "compile": check_compile,
        "pretrain": lambda: check_pretrain(data, args.steps, out),
        "sample": lambda: check_sample(results["pretrain"]["run_dir"]),
        "oom": lambda: check_oom(data),
        "speed": check_speed,
    }
    run_checks(checks, args.only, results, out / "cuda_check.jsonl")


class Skipped(Exception):
    """A check that did not run, and why (no checkout, no time left): reported, not failed."""


def run_checks(
    checks: dict, only: list[str] | None, results: dict, report: Path, common: dict | None = None
) -> None:
    """Run each check, print its JSON line (with common's keys, such as the card) and append
    it to report, whatever one of them does."""
    for name, check in checks.items():
        if only and name not in only:
            continue
        start = time.perf_counter()
        try:
            result = {"ok": True, **check()}
        except Skipped as exc:
            result = {"ok": False, "skipped": str(exc)}
        except Exception as exc:  # report every check, whatever one of them does
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[-3000:]}
        result["seconds"] = round(time.perf_counter() - start, 1)
        results[name] = result
        line = json.dumps({"check": name, **(common or {}), **result}, default=str)
        print(line, flush=True)
        with open(report, "a") as f:
            f.write(line + "\n")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
