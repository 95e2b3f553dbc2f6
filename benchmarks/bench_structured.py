"""Structured output's cost: new tokens/s with and without a JSON Schema, and the mask's time.

A random-weight model of the 124M shape (llama preset: 12 layers, 12 heads, 768 wide, vocab
50304) samples 128 new tokens after a 16-token prompt at batch 1 and 8 (top-k 50, temperature
0.8) through the inference engine, as `gptcli sample --num-samples 8` does: one request of
`batch` rows, each row masked by its own matcher (Matcher.apply on its logits), then the
sampling controls, then Matcher.advance. "free" passes no matcher (the path every
unconstrained request takes, eval's included), "schema" one matcher per row under a JSON Schema
of nested objects (an array of people: maxLength names, bounded ages, an enum); a row whose
JSON is complete starts a new one, so both runs sample the same number of tokens. The
constraint's own time (llguidance's bitmask, unpacking it, -inf outside the set, advancing the
row) is also shown per step and per token. The vocabulary is a byte-level BPE trained on
Python's standard library (cached in the temp folder): its size, not its text, sets the mask's
cost.

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

from gptcli import constrain, tokenizer  # noqa: E402
from gptcli.engine import Engine, Finish, Request  # noqa: E402
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


class Again:
    """One row's matcher that starts a fresh JSON once one is complete (so it is never done),
    timing its own work: the engine's Matcher protocol."""

    def __init__(self, template: constrain.Matcher) -> None:
        self.template, self.matcher = template, template.fork()
        self.seconds = 0.0

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        masked = self.matcher.apply(logits)
        self.seconds += time.perf_counter() - start
        return masked

    def advance(self, token: int) -> None:
        start = time.perf_counter()
        self.matcher.advance(token)
        if self.matcher.is_done():
            self.matcher = self.template.fork()
        self.seconds += time.perf_counter() - start

    def is_done(self) -> bool:
        return False


class Run:
    """One request of `batch` rows through the engine; with a template, every row constrained."""

    def __init__(self, engine: Engine, batch: int, new: int, template: constrain.Matcher | None):
        self.engine, self.batch, self.template = engine, batch, template
        self.params = SampleConfig(temperature=0.8, top_k=50, max_new_tokens=new)
        self.prompt = torch.randint(0, 256, (PROMPT_LEN,)).tolist()
        self.mask_s = 0.0  # seconds spent in the constraint, summed over runs

    def __call__(self) -> None:
        rows = [Again(self.template) for _ in range(self.batch)] if self.template else None
        request = Request(self.prompt, self.params, 0, self.batch, ignore_eos=True, matchers=rows)
        tokens = sum(e.tokens for e in self.engine.submit(request) if isinstance(e, Finish))
        assert tokens == self.batch * self.params.max_new_tokens, tokens
        self.mask_s += sum(row.seconds for row in rows or [])


def measure(shape: str, rounds: int) -> list[dict]:
    n_layer, n_head, n_embd, vocab, new, megabytes = SHAPES[shape]
    tok = bpe(vocab, megabytes)
    torch.manual_seed(0)
    cfg = ModelConfig(
        n_layer, n_head, n_embd, PROMPT_LEN + new, vocab_size=vocab, **PRESETS["llama"]
    )
    model = GPT(cfg).eval()
    started = time.perf_counter()
    compiler = constrain.Compiler(tok, vocab, constrain.end_ids(tok, chat=False))
    built = time.perf_counter() - started
    template = compiler.matcher(constrain.json_schema(SCHEMA, "bench"))
    rows = []
    for batch in (1, 8):
        engine = Engine(model, tok, batch)
        free, schema = Run(engine, batch, new, None), Run(engine, batch, new, template)
        times: dict[str, list[float]] = {"free": [], "schema": []}
        free(), schema()  # warm-up
        schema.mask_s = 0.0
        for _ in range(rounds):  # interleaved: a busy machine slows both alike
            for name, run in (("free", free), ("schema", schema)):
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
        engine.close()
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
