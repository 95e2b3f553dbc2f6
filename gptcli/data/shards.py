"""Token shards: flat arrays of token ids with <|endoftext|> after every document, appended
as batches are encoded and memory-mapped at training time."""

from __future__ import annotations

import os
import re
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from gptcli import console, tokenizer

BATCH_CHARS = 1 << 18  # characters per encoding batch (one task for a worker thread; small
# enough that the last ones finish close together on all cores)
# Longer documents go to the BPE trainer and the encoders in pieces cut at safe places (same
# word counts, same ids): both need ~100 bytes per pre-token of a string handed over at once
# (a 5 MB document took 0.5 GB), so pieces keep memory bounded.
MAX_PIECE_CHARS = 100_000

_SAFE_CUT = re.compile(r"\n(?=\S)")


def safe_pieces(text: str, size: int = MAX_PIECE_CHARS) -> list[str]:
    """Cut a long text after a newline that is followed by a non-space character.

    The GPT-2 pre-tokenizer never joins such a newline with what follows, so encoding the
    pieces one by one gives exactly the ids of encoding the whole text.
    """
    pieces, start = [], 0
    while len(text) - start > size:
        m = _SAFE_CUT.search(text, start + size)
        if m is None:
            break
        pieces.append(text[start : m.end()])
        start = m.end()
    pieces.append(text[start:])
    return pieces


def unigram_bits_from_counts(counts: np.ndarray, n_bytes: int) -> float:
    n = int(counts.sum())
    if n == 0:
        return 0.0
    p = counts[counts > 0] / n
    bits_per_token = float(-(p * np.log2(p)).sum())
    return bits_per_token * n / max(n_bytes, 1)


PARTIAL = ".{}.bin.partial"  # the shards while they are written; kept for a resumed run


class ShardWriter:
    """Appends encoded batches to data/.{train,val}.bin.partial; renamed only on commit.

    Encoding runs in worker threads (both encoders release the GIL), at most a few batches
    ahead of the writer, so memory stays bounded whatever the corpus size. With `sizes` (from
    a progress record) the partial files are cut back to those sizes and appended to, so an
    interrupted run continues where its last flush left off.
    """

    def __init__(
        self,
        data_dir: Path,
        encoder: tokenizer.Encoder,
        workers: int,
        sizes: dict[str, int] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.encoder = encoder
        self.vocab = encoder.tok.get_vocab_size()
        self.tmp = partial_paths(data_dir)
        self.stats = {s: {"documents": 0, "bytes": 0, "tokens": 0} for s in ("train", "val")}
        self.val_counts = np.zeros(self.vocab, dtype=np.int64)
        with console.writing(data_dir):
            if sizes is None:
                self.files = {s: open(p, "wb") for s, p in self.tmp.items()}
            else:
                self.files = {s: self._reopen(s, sizes[s]) for s in self.tmp}
        self.pool = ThreadPoolExecutor(max_workers=workers)
        self.max_pending = 4 * workers
        self.pending: deque = deque()
        self.batches = {s: ([], [], 0) for s in ("train", "val")}

    def _reopen(self, split_name: str, size: int):
        """The partial file cut back to size, positioned at its end, with its counts."""
        f = open(self.tmp[split_name], "r+b")
        f.truncate(size)
        f.seek(size)
        self.stats[split_name]["tokens"] = size // self.encoder.dtype.itemsize
        if split_name == "val" and size:
            ids = np.memmap(self.tmp["val"], dtype=self.encoder.dtype, mode="r")
            for i in range(0, len(ids), 1 << 24):
                self.val_counts += np.bincount(ids[i : i + (1 << 24)], minlength=self.vocab)
            del ids
        return f

    def skip(self, split_name: str, text: str, ends_document: bool) -> None:
        """Count text that an interrupted run already wrote, without encoding it again."""
        st = self.stats[split_name]
        st["documents"] += ends_document
        st["bytes"] += len(text) if text.isascii() else len(text.encode("utf-8"))

    def add(self, split_name: str, text: str, ends_document: bool) -> None:
        self.skip(split_name, text, ends_document)
        for i, piece in enumerate(pieces := safe_pieces(text)):
            texts, ends, chars = self.batches[split_name]
            texts.append(piece)
            ends.append(ends_document and i == len(pieces) - 1)
            chars += len(piece)
            self.batches[split_name] = (texts, ends, chars)
            if chars >= BATCH_CHARS:
                self._submit(split_name)

    @property
    def tokens(self) -> int:
        """Tokens written (all that was added, after a flush)."""
        return self.stats["train"]["tokens"] + self.stats["val"]["tokens"]

    def _submit(self, split_name: str) -> None:
        texts, ends, _ = self.batches[split_name]
        if not texts:
            return
        self.batches[split_name] = ([], [], 0)
        self.pending.append((split_name, self.pool.submit(self.encoder.encode, texts, ends)))
        while len(self.pending) > self.max_pending:
            self._write_oldest()

    def _write_oldest(self) -> None:
        split_name, future = self.pending.popleft()
        ids = future.result()
        with console.writing(self.data_dir / f"{split_name}.bin"):
            self.files[split_name].write(ids)  # the array's buffer, without a copy
        self.stats[split_name]["tokens"] += len(ids)
        if split_name == "val":
            self.val_counts += np.bincount(ids, minlength=self.vocab)

    def flush(self, durable: bool = False) -> dict[str, int]:
        """Encode and write everything added so far; the partial files' sizes. An encoded
        document's ids do not depend on the batch it was encoded in, so flushing at any point
        leaves the same bytes as not flushing."""
        for s in ("train", "val"):
            self._submit(s)
        while self.pending:
            self._write_oldest()
        for s, f in self.files.items():
            with console.writing(self.data_dir / f"{s}.bin"):
                f.flush()
                if durable:
                    os.fsync(f.fileno())
        return {s: f.tell() for s, f in self.files.items()}

    def commit(self) -> dict:
        self.flush(durable=True)
        for s, f in self.files.items():
            with console.writing(self.data_dir / f"{s}.bin"):
                f.close()
                self.tmp[s].replace(self.data_dir / f"{s}.bin")
        self.pool.shutdown()
        return self.stats

    def close(self) -> None:
        """Stop without committing: the partial files keep what was written (a progress
        record says how much of it is whole)."""
        for _, future in self.pending:
            future.cancel()
        self.pool.shutdown(wait=True, cancel_futures=True)
        for f in self.files.values():
            f.close()


def partial_paths(data_dir: Path) -> dict[str, Path]:
    return {s: data_dir / PARTIAL.format(s) for s in ("train", "val")}


def load_shard(run_dir: Path, split_name: str, manifest: dict) -> np.ndarray:
    path = run_dir / "data" / f"{split_name}.bin"
    return np.memmap(path, dtype=np.dtype(manifest["dtype"]), mode="r")
