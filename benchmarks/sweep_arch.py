"""Architecture sweep at equal wall-clock on this CPU: which switches learn most per second.

Each variant trains for the same budget on Tiny Shakespeare (1024-token BPE) and on TinyStories
(2048-token BPE) and reports validation bits per byte; lower is better. The shipped recipes use
the winner. GPT-2's combination is the baseline.

    python benchmarks/sweep_arch.py [--seconds 60]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from timed_training import train_for

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CORPORA = {
    "shakespeare": [f"data.source={DATA / 'tinyshakespeare.txt'}", "tokenizer.vocab_size=1024"],
    "tinystories": [
        f"data.source={DATA / 'tinystories' / 'TinyStoriesV2-GPT4-train.head.txt'}",
        "tokenizer.vocab_size=2048",
    ],
}
SIZE = ["model.n_layer=4", "model.n_head=4", "model.n_embd=192", "model.block_size=256",
        "train.batch_size=8", "train.lr=2e-3", "train.warmup_steps=30"]  # fmt: skip
VARIANTS = {
    "gpt2 (learned, layernorm, gelu, bias)": ["model.preset=gpt2"],
    "llama (rope, rmsnorm, swiglu, no bias)": ["model.preset=llama"],
    "llama + qk_norm": ["model.preset=llama", "model.qk_norm=true"],
    "llama + zero_init_proj": ["model.preset=llama", "model.zero_init_proj=true"],
    "rope, rmsnorm, relu2, no bias": ["model.preset=llama", "model.mlp=relu2"],
    "llama + muon": ["model.preset=llama", "train.optimizer=muon"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    args = parser.parse_args()
    print(f"{'variant':<42}" + "".join(f"{c + ' bpb':>18}" for c in CORPORA) + f"{'steps':>14}")
    for name, sets in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        results = [
            train_for(None, args.seconds, [*SIZE, *corpus, *sets]) for corpus in CORPORA.values()
        ]
        steps = "/".join(str(r["planned_steps"]) for r in results)
        print(f"{name:<42}" + "".join(f"{r['val_bpb']:>18.3f}" for r in results) + f"{steps:>14}")


if __name__ == "__main__":
    main()
