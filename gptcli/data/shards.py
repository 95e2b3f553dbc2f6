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


class ShardWriter:
    """Appends encoded batches to data/.{train,val}.bin temp files; renamed only on commit.

    Encoding runs in worker threads (both encoders release the GIL), at most a few batches
    ahead of the writer, so memory stays bounded whatever the corpus size.
    """

    def __init__(self, data_dir: Path, encoder: tokenizer.Encoder, workers: int) -> None:
        self.data_dir = data_dir
        self.encoder = encoder
        self.vocab = encoder.tok.get_vocab_size()
        self.tmp = {s: data_dir / f".{s}.bin.{os.getpid()}.tmp" for s in ("train", "val")}
        with console.writing(data_dir):
            self.files = {s: open(p, "wb") for s, p in self.tmp.items()}
        self.stats = {s: {"documents": 0, "bytes": 0, "tokens": 0} for s in ("train", "val")}
        self.val_counts = np.zeros(self.vocab, dtype=np.int64)
        self.pool = ThreadPoolExecutor(max_workers=workers)
        self.max_pending = 4 * workers
        self.pending: deque = deque()
        self.batches = {s: ([], [], 0) for s in ("train", "val")}

    def add(self, split_name: str, text: str, ends_document: bool) -> None:
        st = self.stats[split_name]
        st["documents"] += ends_document
        st["bytes"] += len(text) if text.isascii() else len(text.encode("utf-8"))
        for i, piece in enumerate(pieces := safe_pieces(text)):
            texts, ends, chars = self.batches[split_name]
            texts.append(piece)
            ends.append(ends_document and i == len(pieces) - 1)
            chars += len(piece)
            self.batches[split_name] = (texts, ends, chars)
            if chars >= BATCH_CHARS:
                self._submit(split_name)

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

    def commit(self) -> dict:
        for s in ("train", "val"):
            self._submit(s)
        while self.pending:
            self._write_oldest()
        for s, f in self.files.items():
            with console.writing(self.data_dir / f"{s}.bin"):
                f.flush()
                os.fsync(f.fileno())
                f.close()
                self.tmp[s].replace(self.data_dir / f"{s}.bin")
        self.pool.shutdown()
        return self.stats

    def abort(self) -> None:
        for _, future in self.pending:
            future.cancel()
        self.pool.shutdown(wait=True, cancel_futures=True)
        for s, f in self.files.items():
            f.close()
            self.tmp[s].unlink(missing_ok=True)


def load_shard(run_dir: Path, split_name: str, manifest: dict) -> np.ndarray:
    path = run_dir / "data" / f"{split_name}.bin"
    return np.memmap(path, dtype=np.dtype(manifest["dtype"]), mode="r")
