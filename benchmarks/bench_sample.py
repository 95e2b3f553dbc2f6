"""New tokens/s of gptcli's sampler against HF transformers' GPT2LMHeadModel.generate.

Same shapes, random weights (speed does not depend on what the weights say), prompt of 16
tokens, top-k 50, temperature 0.8, batch 1 and 8. Engines run in interleaved windows in one
process, so a busy machine slows them alike and the ratios stay meaningful; medians are shown.
gptcli runs in fp32 and in bf16, and a table says per shape and batch which one `--dtype auto`
picks on this machine (from its cached probe) and its tokens/s against both.
Also: time to first token, and the whole-process time of `gptcli sample --max-new-tokens 1`
against `python -c "import torch"`.

Run from the repository root (needs the `bench` extra: pip install -e '.[bench]'):
    python benchmarks/bench_sample.py            # the full table (a few minutes on 2 cores)
    python benchmarks/bench_sample.py --quick    # a seconds-long smoke run of the same code
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402

from gptcli import engine as gen  # noqa: E402
from gptcli.device import cpu_has_native_bf16, dtype_name  # noqa: E402
from gptcli.engine import Engine, Request  # noqa: E402
from gptcli.model import GPT  # noqa: E402
from gptcli.recipe import (
    ModelConfig,  # noqa: E402
    SampleConfig,  # noqa: E402
)

# name: (n_layer, n_head, n_embd, vocab, new tokens)
SHAPES = {
    "a": (4, 4, 128, 4096, 256),
    "b": (6, 6, 384, 4096, 256),
    "c": (12, 12, 768, 50304, 128),
}
PROMPT_LEN = 16
BLOCK = 512


def build(n_layer: int, n_head: int, n_embd: int, vocab: int):
    """gptcli's GPT and HF's GPT2LMHeadModel of the same shape, random weights, eval mode."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    ours = GPT(ModelConfig(n_layer, n_head, n_embd, BLOCK, vocab_size=vocab)).eval()
    cfg = GPT2Config(
        vocab_size=vocab,
        n_positions=BLOCK,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
    )
    hf = GPT2LMHeadModel(cfg).eval()
    return ours, hf


def word_tokenizer(size: int) -> Tokenizer:
    """Token i is the word w<i>: any id decodes, as the engine's text streams need."""
    vocab = {f"w{i}": i for i in range(size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok


def ours_runner(model: GPT, batch: int, new: int):
    """The engine as `gptcli sample --num-samples batch` drives it: one request of batch rows,
    text streamed and decoded, end-of-text ignored so every row makes `new` tokens."""
    params = SampleConfig(max_new_tokens=new, temperature=0.8, top_k=50)
    prompt = torch.randint(0, model.cfg.vocab_size, (PROMPT_LEN,)).tolist()
    engine = Engine(model, word_tokenizer(model.cfg.vocab_size), batch)

    def run() -> None:
        for _ in engine.generate(Request(prompt, params, 0, batch, ignore_eos=True)):
            pass

    return run


def hf_runner(model, batch: int, new: int):
    prompt = torch.randint(0, model.config.vocab_size, (1, PROMPT_LEN)).repeat(batch, 1)
    mask = torch.ones_like(prompt)

    @torch.inference_mode()
    def run() -> None:
        out = model.generate(
            prompt,
            attention_mask=mask,
            do_sample=True,
            top_k=50,
            temperature=0.8,
            max_new_tokens=new,
            pad_token_id=0,
        )
        assert out.shape[1] == PROMPT_LEN + new

    return run


def interleaved(runners: dict, rounds: int) -> dict[str, float]:
    """Median seconds per call of each runner, the runners taking turns in every round."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for run in runners.values():
        run()  # warm-up: first-call allocations and kernel selection
    for _ in range(rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def speed_table(shapes: dict, rounds: int, quick: bool) -> list[dict]:
    """tokens/s of HF fp32 and gptcli in fp32 and bf16 per shape and batch, and which of the
    two gptcli's --dtype auto picks there (its probe, cached as `gptcli sample` caches it)."""
    cpu = torch.device("cpu")
    rows = []
    for name, (n_layer, n_head, n_embd, vocab, new) in shapes.items():
        ours, hf = build(n_layer, n_head, n_embd, vocab)
        ours_bf16 = GPT(ours.cfg).eval()
        ours_bf16.load_state_dict(ours.state_dict())
        ours_bf16.to(torch.bfloat16)
        for batch in (1, 8):
            auto = gen.pick_dtype("auto", cpu, ours.cfg, batch)
            runners = {
                "HF fp32": hf_runner(hf, batch, new),
                "gptcli fp32": ours_runner(ours, batch, new),
                "gptcli bf16": ours_runner(ours_bf16, batch, new),
            }
            seconds = interleaved(runners, rounds)
            base = batch * new / seconds["HF fp32"]
            for engine, s in seconds.items():
                tps = batch * new / s
                rows.append(dict(shape=name, batch=batch, engine=engine, tps=tps, vs=tps / base))
                print(f"  ({name}) batch {batch} {engine}: {tps:.0f} tokens/s", file=sys.stderr)
            picked = dtype_name(auto)
            tps = {k: batch * new / seconds[f"gptcli {k}"] for k in ("fp32", "bf16")}
            rows.append(dict(shape=name, batch=batch, auto=picked, tps_by=tps))
        # time to first token: prefill + one sampled token, batch 1
        first = interleaved(
            {
                "HF fp32": hf_runner(hf, 1, 1),
                "gptcli fp32": ours_runner(ours, 1, 1),
                "gptcli bf16": ours_runner(ours_bf16, 1, 1),
            },
            max(rounds, 3) if not quick else 1,
        )
        for engine, s in first.items():
            rows.append(dict(shape=name, batch=1, engine=f"TTFT {engine}", ms=s * 1000))
    return rows


def auto_table(rows: list[dict]) -> None:
    """Per shape and batch: the dtype auto picked, and its tokens/s against both dtypes."""
    print("\n| shape | batch | auto picks | auto tok/s | vs fp32 | vs bf16 |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    for r in rows:
        if "auto" in r:
            by = r["tps_by"]
            mine = by[r["auto"]]
            print(
                f"| {r['shape']} | {r['batch']} | {r['auto']} | {mine:.0f} | "
                f"{mine / by['fp32']:.2f}x | {mine / by['bf16']:.2f}x |"
            )


def process_times(rounds: int) -> tuple[float, float]:
    """Median wall seconds of `gptcli sample --max-new-tokens 1` on a shape-(a) checkpoint with
    a small real tokenizer, and of `python -c "import torch"`, interleaved."""
    from gptcli import checkpoint_tensors, stories, tokenizer

    folder = Path(tempfile.mkdtemp(prefix="bench-sample-"))
    tok = tokenizer.train([stories.generate(200_000, 1)], 512, [tokenizer.EOT])
    tokenizer.save(tok, folder / "tokenizer.json")
    model = GPT(ModelConfig(4, 4, 128, BLOCK, vocab_size=tok.get_vocab_size()))
    snapshot = checkpoint_tensors.Snapshot(
        1, model.cfg, model.state_dict(), folder / "tokenizer.json"
    )
    ckpt = checkpoint_tensors.save(folder, snapshot)
    sample = [sys.executable, "-m", "gptcli", "sample", "-c", str(ckpt), "--quiet"]
    sample += ["--prompt", "Once upon a time", "--max-new-tokens", "1"]
    commands = {"sample": sample, "torch": [sys.executable, "-c", "import torch"]}
    times: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(rounds):
        for name, cmd in commands.items():
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            times[name].append(time.perf_counter() - start)
    return statistics.median(times["sample"]), statistics.median(times["torch"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny shape, few tokens: a smoke run")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved windows per engine")
    ap.add_argument("--shapes", default="abc", help="which of the shapes a, b, c to run")
    args = ap.parse_args()
    shapes = {k: v for k, v in SHAPES.items() if k in args.shapes}
    if args.quick:
        shapes = {"a": (2, 2, 32, 256, 8)}
    rounds = 1 if args.quick else args.rounds
    torch.set_grad_enabled(False)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, ", end="")
    print(f"native bf16 CPU: {cpu_has_native_bf16()}")
    rows = speed_table(shapes, rounds, args.quick)
    print("\n| shape | batch | engine | new tokens/s | vs HF fp32 |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        if "tps" in r:
            print(
                f"| {r['shape']} | {r['batch']} | {r['engine']} | {r['tps']:.0f} | {r['vs']:.2f}x |"
            )
    auto_table(rows)
    print("\n| shape | time to first token (batch 1, prompt 16) | ms |")
    print("| --- | --- | --- |")
    for r in rows:
        if "ms" in r:
            print(f"| {r['shape']} | {r['engine'].removeprefix('TTFT ')} | {r['ms']:.1f} |")
    print("\n| shape | engine | batch 8 / batch 1 tokens/s |")
    print("| --- | --- | --- |")
    tps = {(r["shape"], r["batch"], r["engine"]): r["tps"] for r in rows if "tps" in r}
    for (shape, batch, engine), value in tps.items():
        if batch == 8:
            print(f"| {shape} | {engine} | {value / tps[(shape, 1, engine)]:.2f}x |")
    sample_s, torch_s = process_times(1 if args.quick else 5)
    print(
        f"\nwhole process: gptcli sample --max-new-tokens 1 {sample_s:.2f} s, "
        f'python -c "import torch" {torch_s:.2f} s (difference {sample_s - torch_s:.2f} s)'
    )


if __name__ == "__main__":
    main()
