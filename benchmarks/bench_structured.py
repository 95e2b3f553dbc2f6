"""Structured output's cost: new tokens/s with and without a JSON Schema, and the mask's time.

A random-weight model of the 124M shape (llama preset: 12 layers, 12 heads, 768 wide, vocab
50304) samples 128 new tokens after a 16-token prompt at batch 1 and 8 (top-k 50, temperature
0.8) in a plain KV-cache loop: logits -> constrain.mask_logits -> generate.next_token ->
Matcher.advance. "free" passes no matcher (the path every unconstrained row takes), "schema"
one matcher per row under a JSON Schema of nested objects (an array of people: maxLength
names, bounded ages, an enum) that never runs out within the budget; a row whose JSON is
complete starts a new one, so both runs sample the same number of tokens. The mask's time
(llguidance's bitmask, unpacking it, -inf outside the set, advancing each row) is also shown
per step and per token. The vocabulary is a byte-level BPE trained on Python's standard
library (cached in the temp folder): its size, not its text, sets the mask's cost.

Run from the repository root (needs the structured extra: pip install -e '.[structured]'):
    python benchmarks/bench_structured.py            # the 124M shape (minutes on 2 cores)
    python benchmarks/bench_structured.py --quick    # a seconds-long smoke run of the same code
"""

from __future__ import annotations

import argparse
import statistics
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from gptcli import constrain, generate, tokenizer  # noqa: E402
from gptcli.model import GPT  # noqa: E402
from gptcli.recipe import PRESETS, ModelConfig, SampleConfig  # noqa: E402
from gptcli.tasks import sft  # noqa: E402

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "mood": {"enum": ["happy", "sad", "calm"]},
    },
    "required": ["name", "age", "mood"],
    "additionalProperties": False,
}
SCHEMA = {
    "type": "object",
    "properties": {"people": {"type": "array", "items": PERSON}},
    "required": ["people"],
    "additionalProperties": False,
}
PROMPT_LEN = 16
# (n_layer, n_head, n_embd, vocab, new tokens, corpus MB for the tokenizer)
SHAPES = {"124M": (12, 12, 768, 50304, 128, 16), "quick": (2, 2, 64, 4096, 24, 1)}


def bpe(vocab: int, megabytes: int):
    """A byte-level BPE of about vocab tokens trained on the standard library, cached."""
    path = Path(tempfile.gettempdir()) / f"gptcli-bench-structured-{vocab}-{megabytes}.json"
    if path.is_file():
        return tokenizer.load(path)
    root = Path(sysconfig.get_paths()["stdlib"])
    texts, size = [], 0
    for p in sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts):
        texts.append(p.read_text(errors="replace"))
        size += len(texts[-1])
        if size > megabytes * 1e6:
            break
    tok = tokenizer.train(texts, vocab, ["<|endoftext|>", *sft.CHAT_TOKENS])
    tokenizer.save(tok, path)
    return tok


class Loop:
    """One batch sampled with a KV cache; with a template matcher, every row is constrained."""

    def __init__(self, model: GPT, batch: int, new: int, template: constrain.Matcher | None):
        self.model, self.batch, self.new, self.template = model, batch, new, template
        self.params = SampleConfig(temperature=0.8, top_k=50)
        self.prompt = torch.randint(0, 256, (batch, PROMPT_LEN))
        self.mask_s = 0.0  # seconds spent in the constraint, summed over runs

    @torch.inference_mode()
    def __call__(self) -> None:
        rows = self.batch
        matchers = [self.template.fork() if self.template else None for _ in range(rows)]
        gen = torch.Generator().manual_seed(0)
        cache = self.model.new_cache(rows)
        logits, _ = self.model(self.prompt, cache=cache, last_only=True)
        for pos in range(PROMPT_LEN, PROMPT_LEN + self.new):
            start = time.perf_counter()
            masked = constrain.mask_logits(logits[:, -1], matchers)
            took = time.perf_counter() - start
            token = generate.next_token(masked, self.params, gen)
            start = time.perf_counter()
            if self.template is not None:
                for row, done in enumerate(constrain.advance(matchers, token.view(-1).tolist())):
                    if done:  # this JSON is complete: the row starts another
                        matchers[row] = self.template.fork()
            self.mask_s += took + time.perf_counter() - start
            logits, _ = self.model(token, cache=cache, pos=pos)


def measure(shape: str, rounds: int) -> list[dict]:
    n_layer, n_head, n_embd, vocab, new, megabytes = SHAPES[shape]
    tok = bpe(vocab, megabytes)
    torch.manual_seed(0)
    cfg = ModelConfig(
        n_layer, n_head, n_embd, PROMPT_LEN + new, vocab_size=vocab, **PRESETS["llama"]
    )
    model = GPT(cfg).eval().prepack()
    started = time.perf_counter()
    compiler = constrain.Compiler(tok, vocab, constrain.end_ids(tok, chat=False))
    built = time.perf_counter() - started
    template = compiler.matcher(constrain.json_schema(SCHEMA, "bench"))
    rows = []
    for batch in (1, 8):
        free, schema = Loop(model, batch, new, None), Loop(model, batch, new, template)
        times: dict[str, list[float]] = {"free": [], "schema": []}
        free(), schema()  # warm-up
        schema.mask_s = 0.0
        for _ in range(rounds):  # interleaved: a busy machine slows both alike
            for name, loop in (("free", free), ("schema", schema)):
                start = time.perf_counter()
                loop()
                times[name].append(time.perf_counter() - start)
        free_s, schema_s = (statistics.median(times[k]) for k in ("free", "schema"))
        step_us = schema.mask_s / (rounds * new) * 1e6
        rows.append(
            dict(
                shape=shape,
                tokenizer=tok.get_vocab_size(),
                batch=batch,
                free=batch * new / free_s,
                schema=batch * new / schema_s,
                overhead=schema_s / free_s - 1,
                step_us=step_us,
                token_us=step_us / batch,
                compiler_s=built,
            )
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny shape, few tokens: a smoke run")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    rows = measure("quick" if args.quick else "124M", 1 if args.quick else args.rounds)
    print(
        f"vocabulary: the model's {SHAPES[rows[0]['shape']][3]}, the tokenizer's "
        f"{rows[0]['tokenizer']}; llguidance's view of it built in {rows[0]['compiler_s']:.2f} s"
    )
    print("| shape | batch | free tok/s | schema tok/s | overhead | mask µs/step | µs/token |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['shape']} | {r['batch']} | {r['free']:,.0f} | {r['schema']:,.0f} | "
            f"{r['overhead']:+.1%} | {r['step_us']:,.0f} | {r['token_us']:,.0f} |"
        )


if __name__ == "__main__":
    main()
