"""Text and Markdown files: documents are the pieces between <|endoftext|> separators."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from gptcli.console import UserError
from gptcli.data import streams
from gptcli.data.streams import Reader, Reading
from gptcli.recipe import EOT

SEP = EOT.encode()

size = streams.file_size  # the text's size, for the BPE sample


def segments(path: Path, on_bytes: Callable[[int], None]) -> Iterator[tuple[bytes, int]]:
    """The raw bytes between <|endoftext|> separators of a text file, with their offsets."""
    reader = Reader(path, on_bytes)
    try:
        buf, offset, searched = bytearray(), 0, 0
        while True:
            chunk = reader.stream.read(streams.READ_CHUNK)
            reader.report()
            if chunk:
                buf += chunk
            while True:
                i = buf.find(SEP, searched)
                if i < 0:
                    searched = max(0, len(buf) - len(SEP) + 1)
                    break
                yield bytes(buf[:i]), offset
                offset += i + len(SEP)
                del buf[: i + len(SEP)]
                searched = 0
            if not chunk:
                break
        yield bytes(buf), offset
    except streams.errors_while_reading() as e:
        raise streams.read_error(path, e) from None
    finally:
        reader.close()


def documents(path: Path, reading: Reading) -> Iterator[str]:
    """Documents of a text file: the pieces between <|endoftext|> separators, stripped."""
    for raw, offset in segments(path, reading.on_bytes):
        doc = streams.decode(raw, path, offset, reading.errors).strip()
        if doc:
            yield doc


def records(path: Path) -> Iterator[tuple[str, dict]]:
    raise UserError(
        f"{path}: task examples come from .jsonl, .csv, .tsv, .parquet or .arrow files, "
        "not text (a text file feeds task: lm)"
    )


def is_document(raw: bytes, errors: str) -> bool:
    """Whether raw text decodes to a document (not only whitespace), mostly without decoding.

    Bytes that strip to nothing are only ASCII whitespace; a first byte left that is ASCII but
    not \x1c-\x1f (which str.strip also removes) starts a document. Anything else is decoded
    (invalid UTF-8 under errors: strict counts; the reading pass reports it).
    """
    stripped = raw.strip()
    if not stripped:
        return False
    if stripped[0] < 0x80 and not 0x1C <= stripped[0] <= 0x1F:
        return True
    return bool(raw.decode("utf-8", "replace" if errors == "strict" else errors).strip())


def count_documents(path: Path, errors: str, limit: int) -> int:
    """Documents in a text file, counted by scanning bytes, stopping at limit."""
    count = 0
    for raw, _ in segments(path, lambda n: None):
        count += is_document(raw, errors)
        if count >= limit:
            break
    return count
