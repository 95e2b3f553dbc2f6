"""Build a multiple-choice task from TinyStories: which sentence comes next in the story?

Each example is the opening of a story (its first sentences), the true next sentence and three
next sentences taken from other stories, shuffled; `label` is the index of the true one. It
feeds `task: {kind: classify, format: choice}` (recipes/finetune/story-choice.yaml).

    python examples/story_cloze.py ../shared/data/tinystories/*.txt data/story_cloze
    (writes data/story_cloze_train.jsonl and data/story_cloze_dev.jsonl)
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path


def stories(path: Path) -> list[list[str]]:
    text = path.read_text(encoding="utf-8")
    out = []
    for story in text.split("<|endoftext|>"):
        sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", " ".join(story.split()))]
        sentences = [s for s in sentences if len(s.split()) >= 3]
        if len(sentences) >= 4:
            out.append(sentences)
    return out


def examples(all_stories: list[list[str]], rng: random.Random, n_choices: int = 4) -> list[dict]:
    out = []
    for story in all_stories:
        k = rng.randint(2, min(4, len(story) - 1))
        context, answer = " ".join(story[:k]), story[k]
        others = [s for s in rng.sample(all_stories, n_choices + 1) if s is not story]
        choices = [answer] + [rng.choice(s[1:]) for s in others[: n_choices - 1]]
        order = list(range(n_choices))
        rng.shuffle(order)
        out.append(
            {"context": context, "choices": [choices[j] for j in order], "label": order.index(0)}
        )
    return out


def main(sources: list[str], out_prefix: str, dev_fraction: float = 0.1, seed: int = 0) -> None:
    rng = random.Random(seed)
    data = examples([s for source in sources for s in stories(Path(source))], rng)
    n_dev = max(1, int(len(data) * dev_fraction))
    prefix = Path(out_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", data[n_dev:]), ("dev", data[:n_dev])):
        path = prefix.with_name(f"{prefix.name}_{name}.jsonl")
        path.write_text("".join(json.dumps(r) + "\n" for r in part))
        print(f"{path}\t{len(part)}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python examples/story_cloze.py TINYSTORIES.txt... OUT_PREFIX")
    main(sys.argv[1:-1], sys.argv[-1])
