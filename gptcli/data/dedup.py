"""Duplicate documents: exact copies by a hash of their normalised text, near copies by MinHash
signatures over word 5-grams with locality-sensitive banding (rensa computes the signatures).

Both indexes hold only the documents kept so far (the first copy of a cluster stays), in
sorted runs of 64-bit keys that merge like a binary counter; past a memory budget the largest
runs become memory-mapped files, so the index never holds more than the budget in RAM. Near
candidates (documents sharing a band) are confirmed by the share of equal signature slots,
read back from the signature file on disk; that file, with the exact keys, is what a resumed
tokenize rebuilds both indexes from.
"""

from __future__ import annotations

import hashlib
import math
import os
from importlib import metadata
from pathlib import Path

import numpy as np

from gptcli.console import UserError
from gptcli.data import shingles

try:  # the optional extra: near() names the install line when it is missing
    import rensa
except ImportError:
    rensa = None

INSTALL = "pip install 'gptcli[curate]'"
NUM_PERM = 128  # signature slots: 512 bytes a document on disk
SHINGLE = 5  # words per shingle
SEED = 1337  # rensa's permutations: part of the fingerprint through rensa's version
MEMORY_BUDGET = 1 << 30  # bytes of sorted index runs held in RAM (near and exact together)
MERGE_LIMIT = 1 << 23  # runs of more keys than this are never merged (bounds a merge's memory)


def near_version() -> str:
    """rensa's version (it decides the signatures), or exit 2 with the install line."""
    if rensa is None:
        raise UserError(f"data.dedup: near needs the rensa library: {INSTALL}")
    return metadata.version("rensa")


def bands_for(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows): the most rows per band (fewest chance candidates) with which a pair at
    the threshold still shares a band with probability >= 0.95; candidates are then checked."""
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= 0.95:
            return bands, rows
    return num_perm, 1


def exact_key(text: str) -> int:
    """A 64-bit hash of the text lower-cased with its whitespace collapsed."""
    norm = " ".join(text.lower().split()).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(norm, digest_size=8).digest(), "little")


class KeyIndex:
    """64-bit keys -> int64 values, in sorted runs; memory-mapped past `budget` bytes."""

    def __init__(self, spill: Path, budget: int) -> None:
        self.spill, self.budget = spill, budget
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []
        self.spilled = 0

    def __len__(self) -> int:
        return sum(len(k) for k, _ in self.runs)

    def add(self, keys: np.ndarray, values: np.ndarray) -> None:
        if not len(keys):
            return
        order = np.argsort(keys, kind="stable")
        self.runs.append((keys[order], values[order]))
        while len(self.runs) > 1:
            (k1, v1), (k2, v2) = self.runs[-2], self.runs[-1]
            if len(k2) * 2 < len(k1) or len(k1) + len(k2) > MERGE_LIMIT:
                break
            keys_, values_ = np.concatenate([k1, k2]), np.concatenate([v1, v2])
            order = np.argsort(keys_, kind="stable")
            self.runs[-2:] = [(keys_[order], values_[order])]
        self._keep_to_budget()

    def _keep_to_budget(self) -> None:
        """Memory-map the largest runs held in RAM until the rest fits the budget."""
        held = [i for i, (k, _) in enumerate(self.runs) if not isinstance(k, np.memmap)]
        size = sum(self.runs[i][0].nbytes * 2 for i in held)
        for i in sorted(held, key=lambda i: -len(self.runs[i][0])):
            if size <= self.budget:
                break
            keys, values = self.runs[i]
            size -= keys.nbytes * 2
            self.spill.mkdir(parents=True, exist_ok=True)
            paths = [self.spill / f"run-{self.spilled}-{part}.npy" for part in ("k", "v")]
            self.spilled += 1
            np.save(paths[0], keys)
            np.save(paths[1], values)
            self.runs[i] = (np.load(paths[0], mmap_mode="r"), np.load(paths[1], mmap_mode="r"))

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(query position, value) for every stored key equal to a query key."""
        where, found = [], []
        for run_keys, run_values in self.runs:
            lo = np.searchsorted(run_keys, keys, "left")
            hi = np.searchsorted(run_keys, keys, "right")
            n = hi - lo
            if not n.any():
                continue
            q = np.repeat(np.arange(len(keys)), n)
            pos = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n) + np.repeat(lo, n)
            where.append(q)
            found.append(np.asarray(run_values[pos]))
        if not where:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return np.concatenate(where), np.concatenate(found)


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """[n, bands] 64-bit keys: each band's rows hashed together with the band's number."""
    keys = np.empty((len(sigs), bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for b in range(bands):
            acc = np.full(len(sigs), np.uint64(b + 1) * shingles.NGRAM_BASE, dtype=np.uint64)
            for r in range(rows):
                acc = shingles.mix(acc ^ sigs[:, b * rows + r].astype(np.uint64))
            keys[:, b] = acc
    return keys


class SignatureFile:
    """The signatures of the documents the near index holds, appended in order, one row each:
    the document's number (2 x uint32) and its NUM_PERM slots. Read back one row at a time to
    confirm a candidate, and whole to rebuild the index on resume."""

    ROW = (NUM_PERM + 2) * 4

    def __init__(self, path: Path, rows: int) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as f:
            f.truncate(rows * self.ROW)  # rows past the last saved state were never recorded
        self.f = open(path, "a+b", buffering=0)  # writes go to the end, reads seek
        self.rows = rows

    def append(self, docs: np.ndarray, sigs: np.ndarray) -> None:
        ids = docs.astype(np.uint64)
        low = (ids & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        table = np.column_stack([low, (ids >> np.uint64(32)).astype(np.uint32), sigs])
        self.f.write(np.ascontiguousarray(table).tobytes())
        self.rows += len(docs)

    def _read(self, first: int, count: int) -> np.ndarray:
        self.f.seek(first * self.ROW)
        raw = np.frombuffer(self.f.read(count * self.ROW), dtype=np.uint32)
        return raw.reshape(count, NUM_PERM + 2)

    def row(self, i: int) -> tuple[int, np.ndarray]:
        raw = self._read(i, 1)[0]
        return int(raw[0]) | (int(raw[1]) << 32), raw[2:]

    def chunks(self, size: int = 1 << 16):
        """(first row, signatures) of every row, size rows at a time."""
        for start in range(0, self.rows, size):
            yield start, self._read(start, min(size, self.rows - start))[:, 2:]

    def sync(self) -> None:
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


class NearIndex:
    """Near-duplicate detection: a document is a copy of a kept one when their signatures
    agree in at least `threshold` of the slots (the estimated word-5-gram Jaccard similarity).
    """

    def __init__(self, threshold: float, folder: Path, rows: int, budget: int) -> None:
        near_version()
        self.threshold = threshold
        self.bands, self.rows_per_band = bands_for(threshold)
        self.file = SignatureFile(folder / "near.sig", rows)
        self.index = KeyIndex(folder / "near-runs", budget)
        for start, sigs in self.file.chunks():  # rebuild from what a previous run saved
            keys = band_keys(sigs, self.bands, self.rows_per_band)
            self.index.add(keys.ravel(), np.repeat(np.arange(start, start + len(sigs)), self.bands))

    def signatures(self, docs: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The documents' signatures, and which have any word (a document without one is
        never a near copy: its signature would match every other empty one)."""
        grams = shingles.ngrams(shingles.words(docs), SHINGLE)
        offsets = grams.starts.astype(np.uint64)
        m = rensa.RMinHash.digest_matrix_from_flat_token_hashes(
            grams.hashes, offsets, NUM_PERM, SEED
        )
        return np.array(m.to_rows(), dtype=np.uint32).reshape(-1, NUM_PERM), np.diff(
            grams.starts
        ) > 0

    def check(self, numbers: list[int], docs: list[str]) -> list[int | None]:
        """For each document in order: the number of the kept document it copies, or None (it
        is then kept and indexed). Earlier documents of the same batch count."""
        if not docs:
            return []
        sigs, has_words = self.signatures(docs)
        keys = band_keys(sigs, self.bands, self.rows_per_band)
        q, rows = self.index.lookup(keys.ravel())
        candidates: dict[int, set[int]] = {}
        for doc, row in zip((q // self.bands).tolist(), rows.tolist(), strict=True):
            candidates.setdefault(doc, set()).add(row)
        batch: dict[int, int] = {}  # band key -> position in this batch of a document kept here
        out: list[int | None] = []
        kept: list[int] = []
        need = math.ceil(self.threshold * NUM_PERM - 1e-9)
        for i in range(len(docs)):
            if not has_words[i]:
                out.append(None)
                continue
            copy = self._copy_of(sigs[i], candidates.get(i, ()), need)
            if copy is None:
                for k in keys[i].tolist():
                    if k in batch and int((sigs[batch[k]] == sigs[i]).sum()) >= need:
                        copy = numbers[batch[k]]
                        break
            out.append(copy)
            if copy is None:
                for k in keys[i].tolist():
                    batch.setdefault(k, i)
                kept.append(i)
        if kept:
            first = self.file.rows
            self.file.append(np.array([numbers[i] for i in kept]), sigs[kept])
            new_rows = np.repeat(np.arange(first, first + len(kept)), self.bands)
            self.index.add(keys[kept].ravel(), new_rows)
        return out

    def _copy_of(self, sig: np.ndarray, rows, need: int) -> int | None:
        for row in sorted(rows):
            number, other = self.file.row(row)
            if int((other == sig).sum()) >= need:
                return number
        return None


class ExactIndex:
    """Exact copies: the hash of each kept document's normalised text, saved in order."""

    def __init__(self, folder: Path, count: int, budget: int) -> None:
        self.path = folder / "exact.keys"
        folder.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as f:
            f.truncate(count * 16)
        saved = np.fromfile(self.path, dtype=np.uint64).reshape(-1, 2)
        self.f = open(self.path, "ab", buffering=0)
        self.count = count
        self.index = KeyIndex(folder / "exact-runs", budget)
        self.index.add(saved[:, 0].copy(), saved[:, 1].astype(np.int64))

    def check(self, numbers: list[int], docs: list[str]) -> list[int | None]:
        """For each document in order: the number of the kept document it copies, or None."""
        keys = np.array([exact_key(d) for d in docs], dtype=np.uint64)
        q, found = self.index.lookup(keys)
        prior = dict(zip(q.tolist(), found.tolist(), strict=True))
        batch: dict[int, int] = {}
        out: list[int | None] = []
        for i, k in enumerate(keys.tolist()):
            copy = prior.get(i, batch.get(k))
            out.append(copy)
            if copy is None:
                batch[k] = numbers[i]
        if batch:
            rows = np.array(list(batch.items()), dtype=np.uint64).reshape(-1, 2)
            self.f.write(rows.tobytes())
            self.count += len(rows)
            self.index.add(rows[:, 0].copy(), rows[:, 1].astype(np.int64))
        return out

    def sync(self) -> None:
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()
