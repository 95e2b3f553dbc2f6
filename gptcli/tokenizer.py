"""Byte-level BPE: training with HF `tokenizers`, loading from any gptcli path, encode/decode.

Byte-level means every string round-trips: unknown characters fall back to their UTF-8 bytes,
so there is no <unk> and any text can be encoded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from gptcli import console
from gptcli.console import UserError
from gptcli.files import atomic_target
from gptcli.recipe import EOT

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
    with console.writing(path), atomic_target(path) as tmp:
        tok.save(str(tmp))


def eot_id(tok: Tokenizer) -> int:
    i = tok.token_to_id(EOT)
    if i is None:
        raise UserError(f"the tokenizer has no {EOT} token")
    return i


def document_ids(tok: Tokenizer, text: str) -> list[int]:
    """text as the start of a new document: <|endoftext|> then its ids. Every training document
    follows <|endoftext|>, so a prompt read this way asks for a new document (story) and a
    scored text is read as training text was."""
    return [eot_id(tok), *tok.encode(text, add_special_tokens=False).ids]


def encode_batch(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    """Encode many texts in parallel (tokenizers' Rust thread pool)."""
    return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]


def decode(tok: Tokenizer, ids: list[int]) -> str:
    return tok.decode(ids, skip_special_tokens=False)


class StreamDecoder:
    """Turns a stream of ids into text pieces without ever emitting half a UTF-8 character.

    Byte-level tokens can split a multi-byte character; the decoded tail then ends in U+FFFD
    until the remaining bytes arrive, so the tail is held back until it decodes cleanly.
    Only a short window of ids is decoded per token (the last emitted piece's ids and the new
    ones, the incremental scheme of vLLM and TGI), so a long sample costs O(1) per token, and
    decoders that treat the start of a text specially (Metaspace) still give exact pieces.
    """

    def __init__(self, tok: Tokenizer, prefix: list[int] | None = None) -> None:
        self.tok = tok
        self.ids: list[int] = list(prefix or [])
        self.read = len(self.ids)  # ids before this are already text
        self.start = max(0, self.read - 5)  # context decoded alongside the new ids

    def push(self, token: int) -> str:
        self.ids.append(token)
        return self._piece(final=False)

    def flush(self) -> str:
        return self._piece(final=True)

    def _piece(self, final: bool) -> str:
        before = decode(self.tok, self.ids[self.start : self.read])
        text = decode(self.tok, self.ids[self.start :])
        if not final and (len(text) <= len(before) or text.endswith("\ufffd")):
            return ""
        self.start, self.read = self.read, len(self.ids)
        return text[len(before) :]


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


# --------------------------------------------------------------------------- fast encoding

# GPT-2's pre-tokenizer regex, which `pre_tokenizers.ByteLevel(use_regex=True)` also uses.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def _unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: the printable stand-in character for every byte."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    chars, n = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + n)] = b
            n += 1
    return chars


def tiktoken_encoding(tok: Tokenizer):
    """A tiktoken Encoding with exactly this byte-level BPE's ids, or None when there is none.

    tiktoken merges the adjacent pair whose concatenation has the lowest rank; HF BPE merges the
    pair with the lowest merge index. The two agree when every merged token has one merge and
    ids grow with merge order (true for BPE trained here), which is checked, together with
    every vocabulary entry encoding to the same ids in both. Anything else (a normalizer,
    another pre-tokenizer, dropout, tiktoken missing) returns None and callers use `tokenizers`.
    """
    try:
        import tiktoken
    except ImportError:
        return None
    spec = json.loads(tok.to_str())
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    if (
        model.get("type") != "BPE"
        or model.get("dropout")
        or model.get("continuing_subword_prefix")
        or model.get("end_of_word_suffix")
        or model.get("byte_fallback")
        or model.get("ignore_merges")
        or spec.get("normalizer") is not None
        or pre.get("type") != "ByteLevel"
        or pre.get("add_prefix_space")
        or not pre.get("use_regex", True)
    ):
        return None
    # token string -> its bytes: each stand-in character becomes the byte it stands for, and a
    # character that stands for no byte becomes one that latin-1 cannot encode
    table = {b: 0xFFFF for b in range(256)}
    table.update((ord(c), b) for c, b in _unicode_to_byte().items())
    specials: dict[str, int] = {}
    for added in spec.get("added_tokens", []):
        if added.get("lstrip") or added.get("rstrip") or added.get("single_word"):
            return None
        specials[added["content"]] = added["id"]
    ranks: dict[bytes, int] = {}
    pieces: dict[str, bytes] = {}
    for token, i in model["vocab"].items():
        if token in specials:
            continue
        try:
            pieces[token] = piece = token.translate(table).encode("latin-1")
        except UnicodeEncodeError:
            return None
        ranks[piece] = i
    if len(ranks) + len(specials) != tok.get_vocab_size() or sum(len(b) == 1 for b in ranks) != 256:
        return None
    last = -1
    for merge in model.get("merges", []):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        i = model["vocab"].get(left + right)
        if i is None or i <= last:
            return None
        last = i
    if len(model.get("merges", [])) + 256 != len(ranks):
        return None  # a token that no merge makes: HF never emits it, tiktoken could
    enc = tiktoken.Encoding(
        "gptcli", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=specials
    )
    encode_piece, hf_tokenize = enc._core_bpe.encode_single_piece, tok.model.tokenize
    for token, piece in pieces.items():
        if encode_piece(piece) != [t.id for t in hf_tokenize(token)]:
            return None
    # When the first thread to run the Encoding's regex is an encoding worker, every worker runs
    # much slower (benchmarks/bench_tokenize.py); running it once here, in the thread that
    # built the Encoding, avoids that.
    enc.encode_ordinary("warm up")
    return enc


class Encoder:
    """Encodes batches of documents to one flat id array, with <|endoftext|> after each.

    Uses the tiktoken Encoding above (several times faster, same ids) when it can be built,
    else `tokenizers`' own batch encoding. Both release the GIL, so callers can use threads.
    """

    def __init__(self, tok: Tokenizer, fast: bool = True) -> None:
        self.tok = tok
        self.eot = eot_id(tok)
        self.dtype = np.dtype(np.uint16) if tok.get_vocab_size() <= 2**16 else np.dtype(np.uint32)
        self.tiktoken = tiktoken_encoding(tok) if fast else None
        self.name = "tiktoken" if self.tiktoken is not None else "tokenizers"

    def encode(self, texts: list[str], ends_document: list[bool]) -> np.ndarray:
        if self.tiktoken is not None:
            joined = "".join(
                t + EOT if end else t for t, end in zip(texts, ends_document, strict=True)
            )
            ids = self.tiktoken.encode_to_numpy(joined, allowed_special="all")
            return ids.astype(self.dtype, copy=False)
        parts = []
        for ids, end in zip(encode_batch(self.tok, texts), ends_document, strict=True):
            if end:
                ids.append(self.eot)
            parts.append(np.asarray(ids, dtype=self.dtype))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=self.dtype)


# --------------------------------------------------------------------------- text input


def _not_utf8(where: str, before: bytes, hint: str = "pass UTF-8 text") -> UserError:
    """The error for a byte that is not UTF-8 after the bytes `before`, by line and offset."""
    line = before.count(b"\n") + 1
    offset = len(before) - (before.rfind(b"\n") + 1)
    at = f"{where} line {line}" if line > 1 or where == "stdin" else where
    return UserError(f"{at}: not UTF-8 at byte offset {offset} ({hint})")


def check_text(text: str, where: str, hint: str = "pass UTF-8 text") -> str:
    """text itself, unless it holds bytes that are not UTF-8: they reach Python as lone
    surrogates (from argv, or a JSON \\udcff escape), which no tokenizer can encode."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise _not_utf8(where, text[: e.start].encode("utf-8"), hint) from None
    return text


def decode_text(raw: bytes, where: str) -> str:
    """UTF-8 bytes as text; anything else exits 2 naming the line and byte offset."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _not_utf8(where, raw[: e.start]) from None


def read_lines(stream: BinaryIO, where: str = "stdin") -> Iterator[str]:
    """The lines of a byte stream as they arrive (newline kept), each checked to be UTF-8."""
    for lineno, raw in enumerate(stream, 1):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(
                f"{where} line {lineno}: not UTF-8 at byte offset {e.start} (pass UTF-8 text)"
            ) from None


# --------------------------------------------------------------------------- pipeline mode


def parse_ids(text: str, where: str, vocab_size: int) -> list[int]:
    """Ids as spaces ("15 7 99") or a JSON array ("[15, 7, 99]"), each inside the vocabulary."""
    text = text.strip()
    try:
        ids = json.loads(text) if text.startswith("[") else [int(t) for t in text.split()]
    except ValueError:
        raise UserError(f"{where}: expected token ids, got {text[:40]!r}") from None
    if not isinstance(ids, list):
        raise UserError(f"{where}: expected a JSON array of token ids, got {text[:40]!r}")
    bad = [
        i for i in ids if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < vocab_size
    ]
    if bad:
        raise UserError(f"{where}: id {bad[0]!r} is outside 0..{vocab_size - 1}")
    return ids


def pipeline(
    tok: Tokenizer, lines: Iterable[str], to_text: bool, as_json: bool, count: bool
) -> Iterator[str]:
    """One output line per input line, produced as each line arrives (stdin is never read
    whole): ids, a count, or decoded text; with as_json an object with ids and token strings."""
    vocab = tok.get_vocab_size()
    for lineno, line in enumerate(lines, 1):
        if to_text:
            ids = parse_ids(line, f"input line {lineno}", vocab)
            text = decode(tok, ids)
            yield json.dumps({"ids": ids, "text": text}, ensure_ascii=False) if as_json else text
            continue
        ids = tok.encode(line, add_special_tokens=False).ids
        if count:
            yield json.dumps({"count": len(ids)}) if as_json else str(len(ids))
        elif as_json:
            tokens = [decode(tok, [i]) for i in ids]
            yield json.dumps({"text": line, "ids": ids, "tokens": tokens}, ensure_ascii=False)
        else:
            yield " ".join(map(str, ids))
