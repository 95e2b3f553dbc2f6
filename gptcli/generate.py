"""Sampling: every control over the next-token distribution, a batched loop with a KV cache.

The prompt is run through the model once (prefill), then each new token costs one forward pass
of a single position per row that reuses the preallocated cached keys and values. Text-level
concerns (clean UTF-8 pieces, stop strings across token boundaries) live in TextStream.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch

from gptcli import checkpoint, console, load, memory, tokenizer
from gptcli.checkpoint_tensors import build_model
from gptcli.console import UserError
from gptcli.device import (
    CPU_PROBES,
    autocast_dtype,
    cached_probe,
    dtype_name,
    faster_ratio,
    pick_device,
)
from gptcli.model import GPT
from gptcli.recipe import ModelConfig, SampleConfig
from gptcli.run import recipe_of
from gptcli.tasks import classify, sft
from gptcli.tokenizer import StreamDecoder

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def penalize(logits: torch.Tensor, seen: torch.Tensor | None, penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty: seen tokens' logits are divided by it when positive, else
    multiplied, so a penalty > 1 always makes them less likely."""
    if seen is None or penalty == 1.0:
        return logits
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return finite(torch.where(seen, penalized, logits))


def finite(logits: torch.Tensor) -> torch.Tensor:
    """Logits divided by a tiny temperature or penalty overflow to +-inf; clamped to the
    largest floats, softmax stays a distribution instead of NaN."""
    big = torch.finfo(logits.dtype).max
    return logits.clamp(min=-big, max=big)


def filter_logits(logits: torch.Tensor, params: SampleConfig) -> torch.Tensor:
    """Scale by temperature, then mask everything outside top-k, the top-p nucleus and the
    min-p floor with -inf (HF's order: each filter sees what the previous one kept)."""
    logits = finite(logits.float() / params.temperature)
    if params.top_k and params.top_k < logits.size(-1):
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens before it already cover top_p (the first always stays)
        drop_sorted = (probs.cumsum(-1) - probs) >= params.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    if params.min_p > 0:
        probs = logits.softmax(-1)
        floor = params.min_p * probs.max(dim=-1, keepdim=True).values
        logits = logits.masked_fill(probs < floor, float("-inf"))
    return logits


def next_token(
    logits: torch.Tensor,
    params: SampleConfig,
    gen: torch.Generator,
    seen: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, V) logits -> (B, 1) token ids. Greedy is the argmax after the repetition penalty."""
    logits = penalize(logits.float(), seen, params.repetition_penalty)
    if params.temperature < torch.finfo(torch.float32).tiny:  # 0, or too small to divide by
        return logits.argmax(dim=-1, keepdim=True)
    if params.top_k and params.top_k < logits.size(-1):
        # only the k candidates matter: filter and sample among them, not the whole vocabulary
        values, ids = torch.topk(logits, params.top_k, dim=-1)
        probs = filter_logits(values, dataclasses.replace(params, top_k=0)).softmax(-1)
        return ids.gather(-1, torch.multinomial(probs, 1, generator=gen))
    probs = filter_logits(logits, params).softmax(-1)
    return torch.multinomial(probs, 1, generator=gen)


@torch.inference_mode()
def generate(
    model: GPT,
    prompt: list[int],
    params: SampleConfig,
    seed: int | None = None,
    eos_id: int | None = None,
    num_samples: int = 1,
    finished: list[bool] | None = None,
    scores: list[torch.Tensor] | None = None,
) -> Iterator[list[int | None]]:
    """Yield, per step, one new token per row: num_samples rows continue the same prompt as one
    batch. A row that produced eos_id (which is yielded) or that the caller marked in
    `finished` (e.g. after a stop string) yields None from then on; all finished ends the loop.
    Closing the iterator stops generation (a cancelled request costs nothing more).

    scores, when given, receives before each step the (rows, vocab) log-probabilities of the
    model's next-token distribution, before any sampling control (what an API reports as
    logprobs).

    Past the context the window slides: the newest block_size/2 tokens are prefilled again, so
    each token is exactly what a full forward over its current window would give.
    """
    device = model.wte.weight.device
    model.prepack()  # CPU: oneDNN-layout weights, faster for the few rows decoding has
    gen = torch.Generator(device=device)
    gen.manual_seed(seed if seed is not None else int(torch.seed() % 2**63))
    block = model.cfg.block_size
    rows = num_samples
    finished = finished if finished is not None else [False] * rows
    context = prompt[-block:]
    # the current window's tokens, preallocated: sliding needs them, decoding steps do not copy
    window = torch.zeros(rows, block, dtype=torch.long, device=device)
    window[:, : len(context)] = torch.tensor(context, device=device)
    seen = None
    if params.repetition_penalty != 1.0:
        seen = torch.zeros(rows, model.cfg.vocab_size, dtype=torch.bool, device=device)
        seen[:, window[0, : len(context)]] = True
    cache = model.new_cache(rows)
    pos = len(context)
    logits, _ = model(window[:, :pos], cache=cache, last_only=True)
    keep = block // 2
    for _ in range(params.max_new_tokens):
        if seen is not None and eos_id is not None:
            seen[:, eos_id] = False  # never penalise the end: a penalised sample can still end
        if scores is not None:
            scores.append(torch.log_softmax(logits[:, -1, :].float(), dim=-1))
        token = next_token(logits[:, -1, :], params, gen, seen)  # (rows, 1)
        values = token.view(-1).tolist()
        step: list[int | None] = []
        for row, value in enumerate(values):
            if finished[row]:
                step.append(None)
                continue
            step.append(value)
            if value == eos_id:
                finished[row] = True
        yield step
        if all(finished):
            return
        if seen is not None:
            seen.scatter_(1, token, True)
        if pos < block:
            window[:, pos : pos + 1] = token
            logits, _ = model(token, cache=cache, pos=pos)
            pos += 1
        else:  # window full: keep the newest half (this token included) and prefill it again
            window[:, : keep - 1] = window[:, block - keep + 1 :].clone()
            window[:, keep - 1 : keep] = token
            pos = keep
            logits, _ = model(window[:, :pos], cache=cache, last_only=True)


# --------------------------------------------------------------------------- text and stop strings


class TextStream:
    """One sample's text: pieces that never split a UTF-8 character, cut before a stop string.

    Text that might still become the start of a stop string is held back until the next token
    decides, so a stop string is never printed even when it spans several tokens.
    """

    def __init__(self, tok, prefix: list[int], stops: list[str]) -> None:
        self.decoder = StreamDecoder(tok, prefix)
        self.stops = stops
        self.text = ""  # everything decoded so far (cut at the stop string once it appears)
        self.sent = 0  # characters of text already handed out
        self.stopped = False

    def push(self, token: int) -> str:
        self.text += self.decoder.push(token)
        return self._release(final=False)

    def finish(self) -> str:
        self.text += self.decoder.flush()
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if self.stops and not self.stopped:
            # a match cannot start in released text: that text was never a stop's prefix
            hits = [i for s in self.stops if (i := self.text.find(s, self.sent)) >= 0]
            if hits:
                self.text = self.text[: min(hits)]
                self.stopped = final = True
        end = len(self.text) if final else len(self.text) - self._held()
        piece = self.text[self.sent : end]
        self.sent = max(self.sent, end)
        return piece

    def _held(self) -> int:
        """Length of the longest unreleased suffix that a stop string starts with."""
        tail = self.text[self.sent :]
        longest = max((len(s) for s in self.stops), default=1) - 1
        for n in range(min(len(tail), longest), 0, -1):
            if any(s.startswith(tail[-n:]) for s in self.stops):
                return n
        return 0


# --------------------------------------------------------------------------- dtype and agreement


def pick_dtype(
    name: str,
    device: torch.device,
    cfg: ModelConfig | None = None,
    rows: int = 1,
    doing: str = "sampling",
) -> torch.dtype:
    """The weights' dtype for sampling (or evaluation, forward-only too): auto as in training
    (bf16 where native, unless sampling rows at a time from a model of cfg's shape measured
    slower in it), justified by top1_agreement."""
    if name not in ("auto", *DTYPES):
        raise UserError(f"--dtype must be auto, fp32 or bf16, got {name!r}")
    speedup = None if cfg is None else (lambda: bf16_sampling_speedup(cfg, rows))
    return autocast_dtype(device, name, doing, speedup) or torch.float32


def bf16_sampling_speedup(cfg: ModelConfig, rows: int) -> float:
    """fp32 time over bf16 time of sampling a few tokens, rows at a time, from a random model
    of cfg's shape on this CPU (measured once per shape, then cached)."""

    def measure() -> float:
        with torch.random.fork_rng(devices=[]):  # the user's seed stays untouched
            torch.manual_seed(0)
            fp32 = GPT(cfg).eval()
        bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
        n_prompt = max(1, min(16, cfg.block_size // 2))
        params = SampleConfig(max_new_tokens=min(8, cfg.block_size - n_prompt), top_k=50)
        prompt = [i % cfg.vocab_size for i in range(n_prompt)]

        def sampler(model: GPT) -> Callable[[], None]:
            return lambda: list(generate(model, prompt, params, seed=0, num_samples=rows))

        return faster_ratio(sampler(fp32), sampler(bf16))

    shape = f"bf16 sample|{rows}|{sorted(dataclasses.asdict(cfg).items())}"
    return cached_probe(CPU_PROBES, shape, measure)


@torch.inference_mode()
def top1_agreement(
    model: GPT, ids: torch.Tensor, dtype: torch.dtype, min_margin: float = 0.0
) -> float:
    """Share of positions where a dtype copy of model predicts the same next token as model
    (teacher-forced on ids (B, T)): the check that bf16 weights do not change what is sampled.

    min_margin leaves out positions whose two likeliest tokens are closer than that (in
    logits) under model: ties that bf16's 8-bit mantissa cannot resolve either way.
    """
    reference, _ = model(ids)
    other, _ = copy.deepcopy(model).to(dtype).prepack()(ids)  # the kernels sampling uses
    top2 = reference.topk(2, dim=-1).values
    decided = (top2[..., 0] - top2[..., 1]) >= min_margin
    same = reference.argmax(-1) == other.argmax(-1)
    return same[decided].float().mean().item()


# --------------------------------------------------------------------------- gptcli sample


def load_params(ckpt: Path, overrides: dict[str, object]) -> SampleConfig:
    """The `sample:` defaults of the run the checkpoint belongs to, flags on top."""
    recipe = recipe_of(ckpt)
    defaults = recipe.sample if recipe is not None else SampleConfig()
    values = {k: v for k, v in overrides.items() if v is not None}
    params = dataclasses.replace(defaults, **values)
    params.check(lambda key: "--" + key.replace("_", "-"))
    return params


def sample_prompt(
    model: GPT,
    tok,
    prompt: str,
    params: SampleConfig,
    seed: int | None = None,
    num_samples: int = 1,
    on_text: Callable[[str], None] | None = None,
    chat: bool = False,
) -> list[dict]:
    """Generate num_samples continuations of prompt as one batch; one result dict per sample.

    on_text (one sample only) receives the prompt, then each new piece of text as it is final.
    chat wraps the prompt in the SFT chat template and ends the reply at its end token.
    """
    eot = tokenizer.eot_id(tok)
    if chat:
        message = [{"role": "user", "content": prompt}]
        prompt_ids, _ = sft.chat_ids(tok, message, add_generation_prompt=True)
        eot = tok.token_to_id(sft.END)
    else:
        prompt_ids = tokenizer.document_ids(tok, prompt)
    block = model.cfg.block_size
    if len(prompt_ids) > block:
        console.warn(
            f"the prompt has {len(prompt_ids)} tokens, more than the context ({block}); "
            f"keeping the last {block}"
        )
    streams = [TextStream(tok, prompt_ids[-block:], params.stop) for _ in range(num_samples)]
    counts = [0] * num_samples
    reasons = ["length"] * num_samples
    finished = [False] * num_samples
    live = on_text if num_samples == 1 else None
    if live is not None and not chat:
        live(prompt)
    started = time.perf_counter()
    steps = generate(model, prompt_ids, params, seed, eot, num_samples, finished)
    with console.progress(enabled=live is None) as bar:
        task = bar.add_task("sample", total=params.max_new_tokens)
        for step in steps:
            for row, token in enumerate(step):
                if token is None:
                    continue
                if token == eot:
                    reasons[row] = "eos"
                    continue
                counts[row] += 1
                piece = streams[row].push(token)
                if streams[row].stopped:
                    reasons[row], finished[row] = "stop", True
                if piece and live is not None:
                    live(piece)
            bar.advance(task)
    elapsed = max(time.perf_counter() - started, 1e-9)
    results = []
    for row, stream in enumerate(streams):
        tail = stream.finish()
        if stream.stopped and reasons[row] != "stop":
            reasons[row] = "stop"  # the stop string completed only when the last bytes decoded
        if tail and live is not None:
            live(tail)
        results.append(
            {
                "prompt": prompt,
                "text": stream.text,
                "tokens": counts[row],
                "finish_reason": reasons[row],
                "tokens_per_s": round(counts[row] / elapsed, 1),
                **({"chat": True} if chat else {}),
            }
        )
    return results


def check_classifier_use(ckpt: Path, picked: bool, flags: list[str]) -> None:
    """A classifier answers with label probabilities: it is never picked for sampling without
    being named, and sampling flags, which it would ignore, are refused."""
    if picked:
        raise UserError(
            f"the newest checkpoint under ./runs, {ckpt}, is a classifier, not a language "
            "model: pick a language model with -c PATH, or name the classifier with -c to "
            "classify text"
        )
    if flags:
        raise UserError(
            f"{flags[0]} does not apply to {ckpt}: it is a classifier (it prints label "
            "probabilities); drop the sampling flags, or pick a language model with -c PATH"
        )


def run(
    checkpoint_path: str | None,
    prompts: Iterable[str],
    overrides: dict[str, object],
    seed: int | None = None,
    num_samples: int = 1,
    dtype: str = "auto",
    on_text: Callable[[str], None] | None = None,
    on_result: Callable[[dict], None] | None = None,
    chat: bool | None = None,
) -> list[dict]:
    """`gptcli sample`: load a checkpoint once, then sample every prompt (lazily consumed, so
    stdin lines are answered as they arrive). on_result receives each sample's result dict.

    A classifier checkpoint answers each input line with its label distribution instead; an
    SFT checkpoint applies its chat template unless chat is False."""
    ckpt = load.resolve(checkpoint_path)
    params = load_params(ckpt, overrides)
    if num_samples < 1:
        raise UserError(f"--num-samples must be >= 1, got {num_samples}")
    device = pick_device("auto")
    pick_dtype(dtype, device)  # a bad --dtype fails before anything loads
    kind = checkpoint.read_info(ckpt)["task"].get("kind", "lm")
    if kind == "classify":
        given = [f"--{key.replace('_', '-')}" for key, v in overrides.items() if v is not None]
        given += ["--num-samples"] * (num_samples != 1) + ["--seed"] * (seed is not None)
        check_classifier_use(ckpt, checkpoint_path is None, given + ["--chat"] * bool(chat))
    if checkpoint_path is None:
        console.info(f"sample: using {ckpt}, the newest checkpoint under ./runs (-c picks another)")
    loaded = load.load(ckpt)
    memory.check_inference(loaded.config, num_samples, dtype, device, "sample", "--num-samples")
    model = build_model(loaded, device).eval()  # first: it names weights that disagree
    weights = pick_dtype(dtype, device, loaded.config, num_samples)
    model = model.to(weights)
    tok = tokenizer.load(ckpt / tokenizer.TOKENIZER_FILE)
    if kind == "classify":
        return classify.classify_run(loaded, tok, model, prompts, on_result)
    if chat is None:
        chat = kind == "sft"
    elif chat and kind != "sft":
        raise UserError(f"--chat: {ckpt} has no chat template (it is not an SFT checkpoint)")
    results = []
    for prompt in prompts:
        samples = sample_prompt(model, tok, prompt, params, seed, num_samples, on_text, chat)
        for result in samples:
            result = {"checkpoint": str(ckpt), "dtype": dtype_name(weights), **result}
            results.append(result)
            if on_result is not None:
                on_result(result)
    return results
