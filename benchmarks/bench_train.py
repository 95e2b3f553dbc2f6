"""Training throughput of gptcli's model against nanoGPT's model.py and HF's GPT2LMHeadModel.

Same shapes, same batches, same optimizer (fused AdamW, lr 1e-3, weight decay 0.1), same step
(forward, backward, clip to 1.0, optimizer step), each engine in fp32 and in bf16 autocast;
timed windows of the engines of one precision alternate in one process, so machine noise hits
them alike and the ratios (always at equal precision) stay meaningful. gptcli runs twice: with
`mlp: gelu_erf`, the exact GELU nanoGPT uses (the equal-architecture ratio), and with the gpt2
preset's `gelu`, GPT-2's tanh form that HF's `gelu_new` also computes (the preset's ratio). A
last column is gptcli as its trainer runs: compiled when `compile: auto` would compile a run of
--run-steps steps (then nanoGPT compiled is timed too) and the compiled step times faster than
eager, as the trainer keeps it only then. Then a bf16-vs-fp32 loss-curve check.

nanoGPT is read from a local checkout (--nanogpt DIR, else $NANOGPT_DIR); without one its rows
are skipped with a note. Its code is loaded from there, never copied here.

    python benchmarks/bench_train.py                  # configs (a) and (b), fp32 and bf16
    python benchmarks/bench_train.py --quick          # a few steps, to check that it runs
    python benchmarks/bench_train.py --quick --precisions fp32   # where bf16 is emulated (slow)
    python benchmarks/bench_train.py --nanogpt ../nanoGPT --configs b --run-steps 5000
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from gptcli.autotune import (  # noqa: E402
    CompiledRegions,
    bf16_training_speedup,
    compile_pays,
    expected_compile_s,
)
from gptcli.device import keep_freed_memory  # noqa: E402
from gptcli.model import GPT  # noqa: E402
from gptcli.optim import param_groups  # noqa: E402
from gptcli.recipe import PRESETS, ModelConfig  # noqa: E402

CONFIGS = {
    "a": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch=12, vocab=65),
    "b": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch=16, vocab=4096),
}
SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
DEFAULT_NANOGPT = Path("/work/main/build/nanoGPT")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
# gptcli's MLP activations, each a row: nanoGPT's exact GELU (equal architecture: nanoGPT's
# nn.GELU()), then the gpt2 preset's tanh GELU (equal to HF's gelu_new)
GELUS = {"gelu_erf": "gelu_erf (= nanoGPT)", "gelu": "gelu (gpt2 preset)"}


def gptcli_config(c: dict, mlp: str = "gelu") -> ModelConfig:
    return ModelConfig(
        n_layer=c["n_layer"], n_head=c["n_head"], n_embd=c["n_embd"],
        block_size=c["block_size"], vocab_size=c["vocab"], **{**PRESETS["gpt2"], "mlp": mlp},
    )  # fmt: skip


def gptcli_model(c: dict, mlp: str = "gelu") -> GPT:
    return GPT(gptcli_config(c, mlp))


def gptcli_builder(mlp: str) -> Callable[[dict], GPT]:
    return lambda c: gptcli_model(c, mlp)


def hf_model(c: dict) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=c["vocab"], n_positions=c["block_size"], n_embd=c["n_embd"],
        n_layer=c["n_layer"], n_head=c["n_head"], resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, activation_function="gelu_new", bos_token_id=None, eos_token_id=None,
    )  # fmt: skip
    return GPT2LMHeadModel(cfg)


def nanogpt_dir(given: str | None) -> Path | None:
    """The nanoGPT checkout to time: --nanogpt, else $NANOGPT_DIR, else the default if there."""
    for candidate in (given, os.environ.get("NANOGPT_DIR")):
        if candidate:
            return Path(candidate)
    return DEFAULT_NANOGPT if DEFAULT_NANOGPT.is_dir() else None


def nanogpt_factory(folder: Path) -> Callable[[dict], torch.nn.Module]:
    """A builder of nanoGPT's GPT (its model.py, imported from the checkout) at a config."""
    spec = importlib.util.spec_from_file_location("nanogpt_model", folder / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def build(c: dict) -> torch.nn.Module:
        cfg = module.GPTConfig(
            block_size=c["block_size"], vocab_size=c["vocab"], n_layer=c["n_layer"],
            n_head=c["n_head"], n_embd=c["n_embd"], dropout=0.0, bias=True,
        )  # fmt: skip
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its parameter count
            return module.GPT(cfg)

    return build


def make_step(model: torch.nn.Module, kind: str, amp: torch.dtype | None, runner=None):
    """One training step of model (kind: gptcli, nanogpt or hf); runner is what is called
    (torch.compile(model), or model itself)."""
    runner = model if runner is None else runner  # a compiled module has no truth value
    # fused: what gptcli's trainer builds, and HF Trainer's default (adamw_torch_fused)
    opt = torch.optim.AdamW(
        param_groups(model.parameters(), 0.1), lr=1e-3, betas=(0.9, 0.95), fused=True
    )

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        device = next(model.parameters()).device.type  # cuda_check.py steps these on a GPU
        ctx = torch.autocast(device, dtype=amp) if amp else contextlib.nullcontext()
        with ctx:
            if kind == "hf":
                loss = runner(input_ids=x, labels=x).loss
            else:  # gptcli and nanoGPT both return (logits, loss)
                loss = runner(x, y)[1]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def timed_windows(runners: dict, batch: tuple, tokens: int, windows: int, steps: int) -> dict:
    """Median tokens/s of each runner, the runners taking turns in every window."""
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(windows):
        for name, run in runners.items():
            start = time.perf_counter()
            for _ in range(steps):
                loss = run(*batch)
            float(loss)
            rates[name].append(tokens * steps / (time.perf_counter() - start))
    return {name: statistics.median(r) for name, r in rates.items()}


def build_runners(c: dict, amp: torch.dtype | None, nanogpt) -> dict:
    """Each engine's step from the same initial seed (the models differ in layout anyway):
    gptcli once per GELU (`gptcli gelu_erf`, `gptcli gelu`), nanoGPT, HF."""
    engines = [(f"gptcli {mlp}", gptcli_builder(mlp), "gptcli") for mlp in GELUS]
    engines += [("nanoGPT", nanogpt, "nanogpt"), ("HF", hf_model, "hf")]
    runners = {}
    for name, build, kind in engines:
        if build is not None:
            torch.manual_seed(0)
            runners[name] = make_step(build(c), kind, amp)
    return runners


def as_trained(c: dict, amp, nanogpt, rates: dict, run_steps: int) -> tuple[dict, dict]:
    """gptcli of each GELU compiled as compile: auto would for a run of run_steps steps (its
    blocks, as the trainer compiles them; nanoGPT compiled whole beside them), and why per
    GELU; no runner for a GELU whose run stays eager."""
    tokens = c["batch"] * c["block_size"]
    runners, whys = {}, {}
    for mlp in GELUS:
        compile_s = expected_compile_s(gptcli_config(c, mlp), c["batch"], amp)
        step_s = tokens / rates[f"gptcli {mlp}"]
        wanted, whys[mlp] = compile_pays(run_steps, step_s, *compile_s)
        if wanted:
            torch.manual_seed(0)
            model = gptcli_model(c, mlp)
            CompiledRegions(model).use(True)
            runners[f"gptcli {mlp} compiled"] = make_step(model, "gptcli", amp)
    if runners and nanogpt is not None:
        torch.manual_seed(0)
        model = nanogpt(c)
        runners["nanoGPT compiled"] = make_step(model, "nanogpt", amp, torch.compile(model))
    return runners, whys


def throughput(c: dict, amp, nanogpt, windows: int, steps: int, run_steps: int) -> dict:
    """tokens/s per engine at config c and precision amp; the trainer's row as `trained`."""
    torch.manual_seed(0)
    x = torch.randint(0, c["vocab"], (c["batch"], c["block_size"] + 1))
    batch = (x[:, :-1].contiguous(), x[:, 1:].contiguous())  # nanoGPT views its targets
    tokens = c["batch"] * c["block_size"]
    runners = build_runners(c, amp, nanogpt)
    for run in runners.values():  # warm up (allocator, oneDNN kernels)
        for _ in range(2):
            run(*batch)
    rates = timed_windows(runners, batch, tokens, windows, steps)
    compiled, whys = as_trained(c, amp, nanogpt, rates, run_steps)
    for name, run in compiled.items():
        start = time.perf_counter()
        run(*batch)
        print(
            f"  {name}: first step (compile) {time.perf_counter() - start:.1f} s", file=sys.stderr
        )
        run(*batch)
    if compiled:
        rates.update(timed_windows(compiled, batch, tokens, windows, steps))
        # the eager engines again, beside the compiled ones, for same-run ratios
        rates.update(timed_windows(runners, batch, tokens, windows, steps))
    # the trainer keeps the compiled module only where its steps time faster than eager ones
    for mlp in GELUS:
        eager, tried = rates[f"gptcli {mlp}"], f"gptcli {mlp} compiled"
        kept = rates.get(tried, 0.0) > eager
        rates[f"trained {mlp}"] = rates[tried] if kept else eager
        path = (
            "compiled" if kept else "compiled, slower, back to eager" if tried in rates else "eager"
        )
        rates[f"why {mlp}"] = f"{path}: {whys[mlp]}"
    return rates


def table_row(rates: dict, mlp: str) -> dict:
    """The rates one row shows: gptcli with this GELU, nanoGPT (whose GELU is the exact one),
    and HF only in the tanh GELU's row, the GELU its gelu_new computes."""
    row = {"gptcli": rates[f"gptcli {mlp}"], "trained": rates[f"trained {mlp}"]}
    shared = ("nanoGPT", "nanoGPT compiled") + (("HF",) if mlp == "gelu" else ())
    return row | {k: rates[k] for k in shared if k in rates}


def report(name: str, label: str, rates: dict) -> None:
    for mlp, row_label in GELUS.items():
        row = table_row(rates, mlp)
        cells = [f"{row[k]:,.0f}" if k in row else "-" for k in ENGINES]  # not run
        ratios = [f"{row[a] / row[b]:.2f}x" if a in row and b in row else "-" for a, b in RATIOS]
        print(f"| ({name}) | {label} | {row_label} | " + " | ".join(cells + ratios) + " |")
        print(f"  ({name}) {label} {mlp} trainer: {rates[f'why {mlp}']}", file=sys.stderr)


ENGINES = ("gptcli", "nanoGPT", "HF", "trained", "nanoGPT compiled")
RATIOS = (
    ("gptcli", "nanoGPT"),
    ("gptcli", "HF"),
    ("trained", "nanoGPT"),
    ("trained", "nanoGPT compiled"),
)


def loss_curve(c: dict, steps: int, amp: torch.dtype | None) -> list[float]:
    """Train on Tiny Shakespeare characters (config a's vocabulary) from a fixed init."""
    text = SHAKESPEARE.read_text()
    chars = sorted(set(text))
    data = torch.tensor([chars.index(ch) for ch in text[:200_000]], dtype=torch.long)
    torch.manual_seed(0)
    model = gptcli_model({**c, "vocab": len(chars)})
    step = make_step(model, "gptcli", amp)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(steps):
        starts = torch.randint(len(data) - c["block_size"] - 1, (c["batch"],), generator=g)
        rows = torch.stack([data[s : s + c["block_size"] + 1] for s in starts])
        losses.append(float(step(rows[:, :-1], rows[:, 1:])))
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps only")
    parser.add_argument("--nanogpt", help="a nanoGPT checkout (default: $NANOGPT_DIR)")
    parser.add_argument("--configs", default="ab", help="which of the configs a, b to run")
    parser.add_argument(
        "--precisions",
        default=",".join(PRECISIONS),
        help="comma-separated, of fp32, bf16 (default both; bf16 also runs the loss-curve check)",
    )
    parser.add_argument(
        "--run-steps",
        type=int,
        help="the run length compile: auto decides for (default 2000; --quick: 0, eager)",
    )
    args = parser.parse_args()
    precisions = {p: PRECISIONS[p] for p in args.precisions.split(",")}
    windows, steps = (1, 2) if args.quick else (6, 5)
    run_steps = args.run_steps if args.run_steps is not None else (0 if args.quick else 2000)
    folder = nanogpt_dir(args.nanogpt)
    nanogpt = None
    if folder is not None and (folder / "model.py").is_file():
        nanogpt = nanogpt_factory(folder)
    else:
        print(f"note: no nanoGPT checkout ({folder or 'give --nanogpt DIR'}): its rows skipped")
    keep_freed_memory()  # as the trainer does; process-wide, so every engine gets it
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, ", end="")
    print(f"load average {os.getloadavg()[0]:.1f}; trainer row: a {run_steps}-step run")
    heads = [f"{e} tok/s" for e in ENGINES] + [f"{a} / {b}" for a, b in RATIOS]
    print("| config | precision | gptcli mlp | " + " | ".join(heads) + " |")
    print("| --- | --- | --- |" + " ---: |" * len(heads))
    for name in args.configs:
        c = CONFIGS[name]
        for label, amp in precisions.items():
            report(name, label, throughput(c, amp, nanogpt, windows, steps, run_steps))
        if "bf16" in precisions:
            cfg = gptcli_config(c)
            pick = "bf16" if bf16_training_speedup(cfg, c["batch"]) > 1.0 else "fp32"
            print(f"  ({name}) dtype auto on this CPU trains in {pick}", file=sys.stderr)
    if "bf16" not in precisions:
        return  # the loss-curve check compares bf16 with fp32
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
