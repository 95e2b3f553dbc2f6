"""Quality filters: rules that drop a whole document by its words, its letters, its repeated
lines or word n-grams, or a regular expression (data.filters).

The thresholds a rule takes when switched on with `true` are the Gopher rules' (Rae et al.
2021, "Scaling Language Models", appendix A), as datatrove implements them: words are
whitespace-separated; a document goes when its most frequent 2-, 3- or 4-gram covers more
than 20, 18 or 16 % of its characters, or its repeated 5- to 10-grams more than 15 to 10 %.
One difference: a most frequent n-gram counts only when it occurs twice or more, so a short
document is not dropped for having no repeats.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np

from gptcli.recipe import FiltersConfig

TOP_NGRAM = {2: 0.20, 3: 0.18, 4: 0.16}  # the most frequent n-gram's share of the characters
REPEATED_NGRAM = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}  # repeated n-grams'
NOT_LETTER = re.compile(r"[\W\d_]+")


def alpha_fraction(text: str) -> float:
    """Letters among the characters that are not whitespace."""
    visible = sum(map(len, text.split()))
    return len(NOT_LETTER.sub("", text)) / max(visible, 1)


def repeated_line_fraction(text: str) -> float:
    """Share of the non-blank lines that repeat an earlier line."""
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    return (len(lines) - len(set(lines))) / len(lines) if lines else 0.0


def _window_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        g = ids[: len(ids) - n + 1].astype(np.uint64)
        for k in range(1, n):
            g = g * np.uint64(0x9E3779B97F4A7C15) + ids[k : len(ids) - n + 1 + k].astype(np.uint64)
    return g


def _repeated_chars(grams: np.ndarray, chars: np.ndarray, n: int) -> int:
    """Characters in repeated n-grams, counted as datatrove does: scanning left to right, an
    n-gram seen before counts its characters and the scan jumps past it."""
    seen: set[int] = set()
    total, i, last = 0, 0, len(grams)
    while i < last:
        g = grams[i]
        if g in seen:
            total += chars[i]
            i += n
        else:
            seen.add(g)
            i += 1
    return total


def repeated_ngrams(words: list[str], size: int) -> bool:
    """Whether the Gopher n-gram rules drop a document of these words (size: its characters)."""
    if len(words) < 2 or not size:
        return False
    number: dict[str, int] = {}
    ids = np.array([number.setdefault(w, len(number)) for w in words], dtype=np.int64)
    if len(number) == len(words):
        return False  # no word repeats, so no n-gram does
    lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    sums = np.concatenate(([0], np.cumsum(lengths)))
    for n, share in {**TOP_NGRAM, **REPEATED_NGRAM}.items():
        if len(words) < n:
            break
        grams = _window_hashes(ids, n)
        values, first, counts = np.unique(grams, return_index=True, return_counts=True)
        if counts.max() < 2:
            break  # no n-gram repeats, so no longer one does either
        chars = sums[n:] - sums[:-n]  # characters of each window's words
        if n in TOP_NGRAM:
            top = int(np.argmax(counts))
            covered = int(chars[first[top]]) * int(counts[top])
        else:
            covered = _repeated_chars(grams.tolist(), chars.tolist(), n)
        if covered / size > share:
            return True
    return False


def rules(cfg: FiltersConfig) -> list[tuple[str, Callable[[str, list[str]], bool]]]:
    """(key, drops) for each rule switched on, in the order they are tried: drops(text, words)
    says whether the document goes."""
    on: dict[str, Any] = cfg.on()
    out: list[tuple[str, Callable[[str, list[str]], bool]]] = []
    if "min_words" in on:
        out.append(("min_words", lambda t, w, n=on["min_words"]: len(w) < n))
    if "max_words" in on:
        out.append(("max_words", lambda t, w, n=on["max_words"]: len(w) > n))
    if "mean_word_length" in on:
        lo, hi = on["mean_word_length"]

        def mean_outside(t: str, w: list[str]) -> bool:
            mean = sum(map(len, w)) / len(w) if w else 0.0
            return not lo <= mean <= hi

        out.append(("mean_word_length", mean_outside))
    if "min_alpha_fraction" in on:
        share = on["min_alpha_fraction"]
        out.append(("min_alpha_fraction", lambda t, w: alpha_fraction(t) < share))
    if "max_repeated_lines" in on:
        share = on["max_repeated_lines"]
        out.append(("max_repeated_lines", lambda t, w: repeated_line_fraction(t) > share))
    if "repeated_ngrams" in on:
        out.append(("repeated_ngrams", lambda t, w: repeated_ngrams(w, len(t))))
    if "drop_regex" in on:
        pattern = re.compile(on["drop_regex"])
        out.append(("drop_regex", lambda t, w: pattern.search(t) is not None))
    return out


def failed(checks: list[tuple[str, Callable[[str, list[str]], bool]]], text: str) -> str | None:
    """The key of the first rule that drops the document, or None."""
    if not checks:
        return None
    words = text.split()
    for key, drops in checks:
        if drops(text, words):
            return key
    return None
