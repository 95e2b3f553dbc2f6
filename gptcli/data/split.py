"""The train/val split: whole documents routed one at a time, the same way on every pass."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from pathlib import Path

from gptcli.console import UserError
from gptcli.data.corpus import has_many_text_documents, iter_documents, label
from gptcli.data.curate import Curator
from gptcli.recipe import DataConfig, SourceConfig

MIN_DOCS_FOR_DOC_SPLIT = 100


class Splitter:
    """Routes documents to train or val, one at a time, the same way on every pass.

    Each document goes whole to one split. The choice is random (seeded) but steered so the
    validation share of characters stays within one document of val_fraction at every point.
    A weight repeats a source's documents (2 = twice; 0.5 = a seeded half of them), all
    copies in the same split. With tail_chars (fewer than 100 documents) the last tail_chars
    characters of the text go to val instead, as nanoGPT does.
    """

    def __init__(self, val_fraction: float, seed: int, tail_chars: int | None = None) -> None:
        self.fraction = val_fraction
        self.rng = random.Random(seed)
        self.copies_rng = random.Random(seed + 1)
        self.tail_chars = tail_chars
        self.total = 0  # characters routed so far (copies included)
        self.taken = 0  # of which went to val
        self.cut: int | None = None

    def copies(self, weight: float) -> int:
        whole = int(weight)
        frac = weight - whole
        return whole + (1 if frac and self.copies_rng.random() < frac else 0)

    def route(self, text: str, weight: float = 1.0) -> Iterator[tuple[str, str, bool]]:
        """(split, text, ends_document) for each copy, or the two halves of a cut document."""
        n = self.copies(weight)
        if self.tail_chars is not None:
            for _ in range(n):
                yield from self._route_tail(text)
            return
        size = len(text) * n
        if not size:
            return
        self.total += size
        want = self.fraction * self.total - self.taken
        to_val = self.rng.random() < min(1.0, max(0.0, want / size))
        if to_val:
            self.taken += size
        for _ in range(n):
            yield ("val" if to_val else "train"), text, True

    def _route_tail(self, text: str) -> Iterator[tuple[str, str, bool]]:
        start = self.total
        self.total += len(text)
        cut = self.tail_chars
        if self.total <= cut:
            yield "train", text, True
        elif start >= cut:
            yield "val", text, True
        else:
            yield "train", text[: cut - start], False
            yield "val", text[cut - start :], True


def tail_split_chars(
    cfg: DataConfig, seed: int, run_dir: Path | None = None, curator: Curator | None = None
) -> int | None:
    """With fewer than 100 documents (counted before curation): characters that go to train
    (the rest is val), of the documents the curator keeps."""
    if cfg.dev or has_many_text_documents(cfg, run_dir, MIN_DOCS_FOR_DOC_SPLIT):
        return None
    docs = list(itertools.islice(iter_documents(cfg, seed, run_dir), MIN_DOCS_FOR_DOC_SPLIT))
    if len(docs) >= MIN_DOCS_FOR_DOC_SPLIT:
        return None
    if not docs:
        raise UserError(f"data.source {cfg.source!r}: the corpus is empty")
    if curator is not None:
        docs = list(curator.curated(docs, text_of, source_of))
        if not docs:
            raise curator.empty_error(f"data.source {cfg.source!r}")
    splitter = Splitter(cfg.val_fraction, seed, tail_chars=2**62)
    for src, doc in docs:
        for _ in splitter.route(doc, src.weight):
            pass
    return splitter.total - max(1, int(splitter.total * cfg.val_fraction))


def text_of(pair: tuple[SourceConfig, str]) -> str:
    return pair[1]


def source_of(pair: tuple[SourceConfig, str]) -> str:
    return label(pair[0])


def dev_config(cfg: DataConfig) -> DataConfig:
    """data.dev read as a corpus of its own, with the section's reading settings."""
    return DataConfig(
        source=[cfg.dev],
        text_field=cfg.text_field,
        errors=cfg.errors,
        max_download_mb=cfg.max_download_mb,
        allow_html=cfg.allow_html,
    )


def routed(
    cfg: DataConfig,
    seed: int,
    run_dir: Path | None,
    tail: int | None,
    on_bytes: Callable[[int], None] = lambda n: None,
    tally: dict | None = None,
    curator: Curator | None = None,
) -> Iterator[tuple[str, str, bool]]:
    """The whole corpus as (split, text, ends_document); with data.dev, source -> train.

    tally, when given, counts each source's documents and skipped rows (see iter_documents);
    a curator, when given, removes documents before a weight repeats them (data.dev's are
    never removed, but a training copy of one is).
    """
    splitter = Splitter(cfg.val_fraction, seed, tail)
    read = 0

    def counted() -> Iterator[tuple[SourceConfig, str]]:
        nonlocal read
        for pair in iter_documents(cfg, seed, run_dir, on_bytes, tally):
            read += 1
            yield pair

    docs = counted()
    if curator is not None:
        if cfg.dev:
            curator.reserve(doc for _, doc in iter_documents(dev_config(cfg), seed, run_dir))
        docs = curator.curated(docs, text_of, source_of)
    for src, doc in docs:
        if cfg.dev:
            for _ in range(splitter.copies(src.weight)):
                yield "train", doc, True
        else:
            yield from splitter.route(doc, src.weight)
    if not read:
        raise UserError(f"data.source {cfg.source!r}: the corpus is empty")
    if curator is not None and not curator.kept:
        raise curator.empty_error(f"data.source {cfg.source!r}")
    if cfg.dev:
        for _, doc in iter_documents(dev_config(cfg), seed, run_dir, on_bytes, tally):
            yield "val", doc, True
