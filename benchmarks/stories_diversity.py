"""How varied is ``builtin:stories``? Generates 5 MB (seed 1337) and prints a short table.

Run from the repository root: ``python benchmarks/stories_diversity.py [--mb 5] [--seed 1337]``.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gptcli.stories import EOT, generate  # noqa: E402

SENTENCE_END = re.compile(r'(?<=[.!?])[\s"]+')
WORD = re.compile(r"[A-Za-z]+(?:'[a-z]+)?")


def measure(n_bytes: int, seed: int) -> dict[str, float]:
    start = time.perf_counter()
    text = generate(n_bytes, seed)
    seconds = time.perf_counter() - start
    stories = [s.strip() for s in text.split(EOT) if s.strip()]
    sentences = [s for s in SENTENCE_END.split(text.replace(EOT, " ")) if s.strip('" \n')]
    words = {w.lower() for w in WORD.findall(text.replace(EOT, " "))}
    n = len(stories)
    return {
        "bytes": len(text.encode("utf-8")),
        "stories": n,
        "sentences": len(sentences),
        "distinct sentences": len(set(sentences)),
        "distinct words": len(words),
        "mean words per story": sum(len(s.split()) for s in stories) / n,
        "generation seconds": seconds,
        'starts "Once upon a time"': sum(s.startswith("Once upon a time") for s in stories) / n,
        'starts "One day"': sum(s.startswith("One day") for s in stories) / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=5.0, help="megabytes to generate")
    parser.add_argument("--seed", type=int, default=1337)
    args = parser.parse_args()
    stats = measure(int(args.mb * 1_000_000), args.seed)
    width = max(len(k) for k in stats)
    print(f"builtin:stories, {args.mb:g} MB, seed {args.seed}")
    for key, value in stats.items():
        if key.startswith("starts"):
            shown = f"{value:.1%}"
        elif isinstance(value, float):
            shown = f"{value:,.2f}"
        else:
            shown = f"{value:,}"
        print(f"  {key:<{width}}  {shown:>10}")


if __name__ == "__main__":
    main()
