"""Sampling controls: everything between the model's logits and the next token, and the text
a row has produced so far.

The controls act on one row's logits in HF's order (repetition penalty, temperature, top-k,
top-p, min-p); TextStream turns a row's tokens into clean UTF-8 pieces and holds back text that
may still become a stop string. A new sampling control goes here.
"""

from __future__ import annotations

import dataclasses

import torch

from gptcli.recipe import SampleConfig
from gptcli.tokenizer import StreamDecoder, decode


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


def next_tokens(
    logits: torch.Tensor,
    params: SampleConfig,
    gens: list[torch.Generator],
    seen: torch.Tensor | None = None,
) -> list[int]:
    """(B, V) logits of rows that share params -> one token id per row, each drawn from its
    own generator (so a row's tokens do not depend on the rows beside it; the controls act
    on each row alone, so batching them changes no value). Greedy is the argmax after the
    repetition penalty."""
    logits = penalize(logits.float(), seen, params.repetition_penalty)
    if params.temperature < torch.finfo(torch.float32).tiny:  # 0, or too small to divide by
        return logits.argmax(dim=-1).tolist()
    ids = None
    if params.top_k and params.top_k < logits.size(-1):
        # only the k candidates matter: filter and sample among them, not the whole vocabulary
        logits, ids = torch.topk(logits, params.top_k, dim=-1)
        params = dataclasses.replace(params, top_k=0)
    probs = filter_logits(logits, params).softmax(-1)
    # torch.multinomial's own draw of one sample, argmax(p / q) with q ~ Exp(1), each row's q
    # from its generator: the same tokens, without a validity check that syncs on every call
    q = torch.empty_like(probs)
    for row, gen in zip(q, gens, strict=True):
        row.exponential_(1, generator=gen)
    picks = (probs / q).argmax(-1, keepdim=True)
    return (picks if ids is None else ids.gather(-1, picks)).view(-1).tolist()


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


def token_logprob(tok, token: int, scores: torch.Tensor, top: int) -> dict:
    """One generated token's text, log-probability and the `top` likeliest alternatives
    (scores: the row's log-probabilities before any sampling control)."""
    entry = {"token": decode(tok, [token]), "logprob": scores[token].item()}
    if top:
        values, ids = torch.topk(scores, min(top, scores.numel()))
        entry["top"] = {
            decode(tok, [i]): v for i, v in zip(ids.tolist(), values.tolist(), strict=True)
        }
    return entry
