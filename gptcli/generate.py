"""Sampling: temperature, top-k and top-p over the model's next-token distribution, with a KV cache.

The prompt is run through the model once (prefill), then each new token costs one forward pass
of a single position that reuses the cached keys and values.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from gptcli.console import UserError
from gptcli.model import GPT


@dataclass
class SamplingParams:
    max_new_tokens: int = 200
    temperature: float = 0.8  # 0 = greedy
    top_k: int = 50  # 0 = off
    top_p: float = 1.0  # 1 = off


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Scale by temperature and mask everything outside top-k and the top-p nucleus with -inf."""
    logits = logits.float() / params.temperature
    if params.top_k and params.top_k < logits.size(-1):
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the tokens before it already cover top_p (the first always stays)
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= params.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_token(logits: torch.Tensor, params: SamplingParams, gen: torch.Generator) -> torch.Tensor:
    if params.temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = filter_logits(logits, params).softmax(-1)
    return torch.multinomial(probs, 1, generator=gen)


@torch.inference_mode()
def generate(
    model: GPT,
    prompt: list[int],
    params: SamplingParams,
    seed: int | None = None,
    eos_id: int | None = None,
) -> Iterator[int]:
    """Yield new token ids one at a time until max_new_tokens or eos_id (not yielded).

    Past the context length the window slides: the newest block_size/2 tokens are re-prefilled.
    """
    device = model.wte.weight.device
    gen = torch.Generator(device=device)
    gen.manual_seed(seed if seed is not None else torch.seed())
    block = model.cfg.block_size
    context = list(prompt[-block:])
    cache = model.new_cache(1)
    logits, _ = model(torch.tensor([context], device=device), cache=cache, last_only=True)
    pos = len(context)
    for _ in range(params.max_new_tokens):
        token = next_token(logits[:, -1, :], params, gen)
        value = int(token.item())
        if eos_id is not None and value == eos_id:
            return
        yield value
        context.append(value)
        if pos >= block:  # window full: keep the newest half and prefill it again
            context = context[-(block // 2) :]
            logits, _ = model(torch.tensor([context], device=device), cache=cache, last_only=True)
            pos = len(context)
        else:
            logits, _ = model(token.view(1, 1), cache=cache, pos=pos)
            pos += 1


def run(
    checkpoint_path: str | None,
    prompt: str,
    overrides: dict[str, object],
    seed: int | None = None,
    on_text: Callable[[str], None] | None = None,
) -> dict:
    """`gptcli sample`: load a checkpoint, apply its run's sample defaults, generate one text.

    on_text receives the prompt and then each new piece of text as soon as it decodes cleanly.
    """
    import dataclasses

    from gptcli import checkpoint, console, tokenizer
    from gptcli import recipe as recipe_mod

    ckpt = checkpoint.resolve(checkpoint_path)
    defaults = recipe_mod.SampleConfig()
    run_recipe = ckpt.parent.parent / "recipe.yaml"
    if run_recipe.is_file():
        defaults = recipe_mod.load(run_recipe).sample
    values = {
        **dataclasses.asdict(defaults),
        **{k: v for k, v in overrides.items() if v is not None},
    }
    params = SamplingParams(**values)
    if params.max_new_tokens < 1:
        raise UserError("--max-new-tokens must be >= 1")
    if params.temperature < 0:
        raise UserError(f"--temperature must be >= 0 (0 = greedy), got {params.temperature}")
    if params.top_k < 0:
        raise UserError(f"--top-k must be >= 0 (0 = off), got {params.top_k}")
    if not 0 < params.top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1], got {params.top_p}")
    if checkpoint_path is None:
        console.info(f"sample: using {ckpt}")

    loaded = checkpoint.load(ckpt)
    model = checkpoint.build_model(loaded).eval()
    tok = tokenizer.load(ckpt / tokenizer.TOKENIZER_FILE)
    eot = tokenizer.eot_id(tok)
    # Documents in training follow <|endoftext|>, so starting with it asks for a fresh story.
    prompt_ids = [eot] + tok.encode(prompt, add_special_tokens=False).ids
    if len(prompt_ids) > model.cfg.block_size:
        console.warn(
            f"the prompt has {len(prompt_ids)} tokens, more than the context "
            f"({model.cfg.block_size}); keeping the last {model.cfg.block_size}"
        )
    stream = tokenizer.StreamDecoder(tok, prompt_ids)
    if on_text is not None:
        on_text(prompt)
    new_ids: list[int] = []
    started = time.perf_counter()
    for token in generate(model, prompt_ids, params, seed=seed, eos_id=eot):
        new_ids.append(token)
        piece = stream.push(token)
        if piece and on_text is not None:
            on_text(piece)
    tail = stream.flush()
    if tail and on_text is not None:
        on_text(tail)
    elapsed = time.perf_counter() - started
    return {
        "checkpoint": str(ckpt),
        "prompt": prompt,
        "text": tokenizer.decode(tok, new_ids),
        "tokens": len(new_ids),
        "finish_reason": "length" if len(new_ids) == params.max_new_tokens else "eos",
        "tokens_per_s": round(len(new_ids) / max(elapsed, 1e-9), 1),
    }
