"""Word n-gram hashes of a batch of documents, computed over their bytes with numpy.

Curation compares documents by their word n-grams (5-grams for near-duplicates, 13-grams for
decontamination). Building each n-gram as a Python string costs more than encoding the text;
here a batch is lower-cased, joined and hashed as one byte array, so the cost per byte is a
few numpy passes. The hashes are the same in every process (no Python `hash`), so signatures
saved by one run of tokenize are valid in the next.

A word is a run of ASCII letters and digits and of non-ASCII characters (so accented words
and scripts without ASCII stay whole); ASCII punctuation and whitespace separate words.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# bytes that belong to a word: ASCII letters and digits, and every byte of a non-ASCII character
WORD_BYTE = np.zeros(256, dtype=bool)
for _c in b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789":
    WORD_BYTE[_c] = True
WORD_BYTE[0x80:] = True

BASE = np.uint64(0x100000001B3)  # odd, so it has an inverse modulo 2**64
BASE_INV = np.uint64(pow(0x100000001B3, -1, 1 << 64))
NGRAM_BASE = np.uint64(0x9E3779B97F4A7C15)
SEP = b"\n"  # joins the documents of a batch: never part of a word


def mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads every input bit over the whole 64-bit hash."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _powers(base: np.uint64, n: int) -> np.ndarray:
    """base**0 .. base**(n-1) modulo 2**64."""
    out = np.full(n, base, dtype=np.uint64)
    out[0] = 1
    return np.cumprod(out, dtype=np.uint64)


@dataclass
class Words:
    """The words of a batch: one 64-bit hash per word, and each document's first word."""

    hashes: np.ndarray  # uint64, the words of all documents in order
    starts: np.ndarray  # int64, len(docs) + 1: document i's words are hashes[starts[i]:starts[i+1]]

    def counts(self) -> np.ndarray:
        return np.diff(self.starts)


def words(docs: Sequence[str]) -> Words:
    """Hash every word of every document (lower-cased) in one pass over the batch's bytes."""
    raw = [d.lower().encode("utf-8", "surrogatepass") for d in docs]
    buf = np.frombuffer(SEP.join(raw) + SEP, dtype=np.uint8)
    inside = WORD_BYTE[buf].view(np.int8)
    edges = np.diff(inside, prepend=np.int8(0), append=np.int8(0))
    begin, end = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    n = len(buf)
    with np.errstate(over="ignore"):
        # prefix[i] = polynomial hash of buf[:i]; a word's hash is prefix[e] - prefix[s] * B**(e-s)
        powers = _powers(BASE, n + 1)
        scaled = (buf.astype(np.uint64) + np.uint64(1)) * _powers(BASE_INV, n)
        sums = np.concatenate(([np.uint64(0)], np.cumsum(scaled, dtype=np.uint64)))
        prefix = np.concatenate(([np.uint64(0)], powers[:-1] * sums[1:]))
        h = prefix[end] - prefix[begin] * powers[end - begin]
    doc_start = np.cumsum([0] + [len(r) + 1 for r in raw])  # byte offset of each document
    return Words(mix(h), np.searchsorted(begin, doc_start).astype(np.int64))


@dataclass
class Ngrams:
    """Word n-gram hashes of a batch: document i's are hashes[starts[i]:starts[i+1]]."""

    hashes: np.ndarray  # uint64
    starts: np.ndarray  # int64, len(docs) + 1

    def of(self, i: int) -> np.ndarray:
        return self.hashes[self.starts[i] : self.starts[i + 1]]

    def doc_of_each(self) -> np.ndarray:
        """The document of each hash."""
        return np.repeat(np.arange(len(self.starts) - 1), np.diff(self.starts))


def ngrams(w: Words, n: int, short: bool = True) -> Ngrams:
    """Each document's word n-grams, hashed; a document of fewer than n words gives one hash of
    all its words when short is set (so short copies still match), none otherwise."""
    h, counts = w.hashes, w.counts()
    total, ndocs = len(h), len(counts)
    doc = np.repeat(np.arange(ndocs), counts)  # the document of each word
    g, gdoc = np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
    if total >= n:
        with np.errstate(over="ignore"):
            g = h[: total - n + 1].copy()
            for k in range(1, n):
                g = g * NGRAM_BASE + h[k : total - n + 1 + k]
        whole = doc[: total - n + 1] == doc[n - 1 :]  # the window starts and ends in one document
        g, gdoc = mix(g[whole]), doc[: total - n + 1][whole]
    if short:
        few = np.flatnonzero((counts > 0) & (counts < n))
        if len(few):
            extra = [_whole(h[w.starts[i] : w.starts[i + 1]]) for i in few]
            g, gdoc = np.concatenate([g, *extra]), np.concatenate([gdoc, few])
            order = np.argsort(gdoc, kind="stable")
            g, gdoc = g[order], gdoc[order]
    per_doc = np.bincount(gdoc, minlength=ndocs)
    return Ngrams(g, np.concatenate(([0], np.cumsum(per_doc))).astype(np.int64))


def _whole(word_hashes: np.ndarray) -> np.ndarray:
    """One hash of a short document's words (fewer than n), marked apart from any n-gram."""
    acc = np.uint64(len(word_hashes)) | np.uint64(1 << 63)
    with np.errstate(over="ignore"):
        for x in word_hashes:
            acc = acc * NGRAM_BASE + x
    return mix(np.array([acc], dtype=np.uint64))
