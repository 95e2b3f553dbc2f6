"""Opening a source file for reading: plain, .gz or .zst, with progress and one-line errors."""

from __future__ import annotations

import gzip
import io
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from gptcli.console import UserError
from gptcli.data import registry

READ_CHUNK = 1 << 20  # bytes read at a time


@dataclass
class Reading:
    """How a source's files are read, and what the readers report back while reading."""

    text_field: str = "text"
    errors: str = "strict"  # bytes that are not UTF-8: strict (exit 2) or replace
    on_bytes: Callable[[int], None] = lambda n: None  # file bytes consumed, for progress
    skipped: Counter = field(default_factory=Counter)  # reason -> rows left out


class TruncatedError(Exception):
    """A compressed stream ended inside a frame: the file is incomplete."""


class ZstdStream(io.RawIOBase):
    """A .zst file's decompressed bytes, frame after frame; an unfinished frame at the end of
    the file is an error (zstandard's own stream reader would end there silently)."""

    def __init__(self, raw) -> None:
        self.raw, self.new = raw, zstandard.ZstdDecompressor().decompressobj
        self.obj = self.new()
        self.out, self.pos = b"", 0
        self.mid_frame = False

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while self.pos >= len(self.out):
            chunk = self.raw.read(READ_CHUNK)
            if not chunk:
                if self.mid_frame:
                    raise TruncatedError
                return 0
            self.out, self.pos = self._feed(chunk), 0
        n = min(len(b), len(self.out) - self.pos)
        b[:n] = self.out[self.pos : self.pos + n]
        self.pos += n
        return n

    def _feed(self, chunk: bytes) -> bytes:
        parts = []
        while chunk:
            parts.append(self.obj.decompress(chunk))
            if self.obj.eof:
                chunk, self.obj, self.mid_frame = self.obj.unused_data, self.new(), False
            else:
                chunk, self.mid_frame = b"", True
        return b"".join(parts)


class Reader:
    """Opens a file (or its .gz/.zst) and reports file bytes read, for the progress bar."""

    def __init__(self, path: Path, on_bytes: Callable[[int], None]) -> None:
        self.raw = open(path, "rb")
        kind = registry.compression(path)
        if kind == ".gz":
            self.stream = gzip.GzipFile(fileobj=self.raw)
        elif kind == ".zst":
            self.stream = io.BufferedReader(ZstdStream(self.raw), READ_CHUNK)
        else:
            self.stream = self.raw
        self.on_bytes = on_bytes
        self.reported = 0

    def report(self) -> None:
        pos = self.raw.tell()
        self.on_bytes(pos - self.reported)
        self.reported = pos

    def close(self) -> None:
        self.report()
        self.stream.close()
        self.raw.close()


def read_error(path: Path, e: BaseException) -> UserError:
    """A file that cannot be read to its end, in one line."""
    if isinstance(e, TruncatedError):
        return UserError(
            f"{path}: the zstd stream is truncated (the file is incomplete; copy or download "
            "it again)"
        )
    reason = " ".join(str(e).split()) or type(e).__name__
    return UserError(f"{path}: cannot read ({reason})")


def errors_while_reading() -> tuple[type[BaseException], ...]:
    """The exceptions a damaged or unreadable file raises from its stream."""
    return (OSError, EOFError, gzip.BadGzipFile, TruncatedError, zstandard.ZstdError)


def file_size(path: Path, text_field: str = "") -> int:
    """How many bytes of text a file holds: its size on disk, or its decompressed size for
    .gz/.zst, found by reading it through (the BPE's sample share and reach come from this, so
    the same text must give the same size in any container; a gzip trailer holds only the
    last member's size, and a zstd frame need not state its own)."""
    if not registry.compression(path):
        return path.stat().st_size
    reader, n = Reader(path, lambda n: None), 0
    try:
        while chunk := reader.stream.read(READ_CHUNK):
            n += len(chunk)
    except errors_while_reading() as e:
        raise read_error(path, e) from None
    finally:
        reader.close()
    return n


def decode(raw: bytes, path: Path, offset: int, errors: str, where: str = "") -> str:
    try:
        return raw.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path}{where}: not UTF-8 at byte offset {offset + e.start} "
            "(convert it to UTF-8, or set data.errors: replace)"
        ) from None
