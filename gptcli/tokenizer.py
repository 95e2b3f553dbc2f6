"""Byte-level BPE: training with HF `tokenizers`, loading from any gptcli path, encode/decode.

Byte-level means every string round-trips: unknown characters fall back to their UTF-8 bytes,
so there is no <unk> and any text can be encoded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from gptcli.console import UserError

EOT = "<|endoftext|>"
TOKENIZER_FILE = "tokenizer.json"


def train(
    texts: Iterable[str], vocab_size: int, special_tokens: list[str], min_frequency: int = 2
) -> Tokenizer:
    """Train a GPT-2-style byte-level BPE; the 256 byte symbols are always in the vocabulary."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def resolve_path(path: str | Path) -> Path:
    """A tokenizer.json, or the folder (run or checkpoint) that holds one."""
    p = Path(path)
    if p.is_dir():
        for candidate in (p / TOKENIZER_FILE, *sorted(p.glob(f"checkpoints/*/{TOKENIZER_FILE}"))):
            if candidate.is_file():
                return candidate
        raise UserError(f"no {TOKENIZER_FILE} in {p} (pass a tokenizer.json, run or checkpoint)")
    if not p.is_file():
        raise UserError(f"tokenizer not found: {p} (pass a tokenizer.json, run or checkpoint)")
    return p


def load(path: str | Path) -> Tokenizer:
    p = resolve_path(path)
    try:
        return Tokenizer.from_file(str(p))
    except Exception as e:  # tokenizers raises plain Exception subclasses on parse errors
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{p}: not a valid tokenizer.json ({first})") from None


def save(tok: Tokenizer, path: Path) -> None:
    """Atomic: readers never see half a tokenizer.json."""
    tmp = path.with_name(f".{path.name}.tmp")
    tok.save(str(tmp))
    tmp.replace(path)


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def eot_id(tok: Tokenizer) -> int:
    i = tok.token_to_id(EOT)
    if i is None:
        raise UserError(f"the tokenizer has no {EOT} token")
    return i


def encode_batch(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    """Encode many texts in parallel (tokenizers' Rust thread pool)."""
    return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]


def decode(tok: Tokenizer, ids: list[int]) -> str:
    return tok.decode(ids, skip_special_tokens=False)


class StreamDecoder:
    """Turns a stream of ids into text pieces without ever emitting half a UTF-8 character.

    Byte-level tokens can split a multi-byte character; the decoded tail then ends in U+FFFD
    until the remaining bytes arrive, so the tail is held back until it decodes cleanly.
    """

    def __init__(self, tok: Tokenizer, prefix: list[int] | None = None) -> None:
        self.tok = tok
        self.ids: list[int] = list(prefix or [])
        self.emitted = len(decode(tok, self.ids))

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = decode(self.tok, self.ids)
        if text.endswith("\ufffd"):
            return ""
        piece = text[self.emitted :]
        self.emitted = len(text)
        return piece

    def flush(self) -> str:
        text = decode(self.tok, self.ids)
        piece = text[self.emitted :]
        self.emitted = len(text)
        return piece


def vocab_stats(tok: Tokenizer) -> dict:
    vocab = tok.get_vocab()
    specials = [t.content for t in tok.get_added_tokens_decoder().values() if t.special]
    byte_decoder = decoders.ByteLevel()
    longest = sorted(vocab, key=lambda t: -len(t))[:10]
    return {
        "vocab_size": tok.get_vocab_size(),
        "special_tokens": specials,
        "longest_tokens": [byte_decoder.decode([t]) for t in longest],
    }
