"""Validation bits per byte of the shipped Shakespeare recipe after 100 s of training.

First 90 % of Tiny Shakespeare trains, the last 10 % validates (the spec's split for a source
with fewer than 100 documents). The peer figures in benchmarks/README.md were measured the same
way: a GPT-2-architecture character model reaches about 2.72 bits/byte in that time here.

    python benchmarks/quality_shakespeare.py [--seconds 100]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from timed_training import train_for

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=100.0)
    parser.add_argument("--set", action="append", default=[], help="extra recipe overrides")
    args = parser.parse_args()
    sets = [f"data.source={SHAKESPEARE}", "data.val_fraction=0.1", *args.set]
    result = train_for(REPO / "recipes" / "shakespeare.yaml", args.seconds, sets)
    print(
        f"shakespeare recipe, {args.seconds:.0f} s budget: {result['planned_steps']} steps, "
        f"{result['elapsed_s']:.0f} s of training (first step {result['first_step_s']:.1f} s), "
        f"val loss {result['val_loss']:.4f}, "
        f"val {result['val_bpb']:.3f} bits/byte (target <= 2.10), "
        f"unigram baseline {result['unigram_bpb']:.3f}"
    )


if __name__ == "__main__":
    main()
