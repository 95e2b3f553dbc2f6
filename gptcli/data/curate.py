"""Corpus curation inside tokenize's own pass over the corpus: quality filters, decontamination,
exact and near-duplicate removal (data.filters, data.decontaminate, data.dedup).

The rules see each source's own documents in corpus order, before a weight repeats them and
before the train/val split, so a removed copy is in neither split and the first copy of a
cluster is the one kept. A document is tried against the filters, then the evaluation sets,
then the exact and near indexes; the first rule that drops it is its reason.

Decisions are numbered by document and kept, so the passes tokenize makes (the split's count,
the BPE sample, the encoding) decide each document once: a later pass replays them. The
decisions and the indexes' keys and signatures are appended to files in data/.curate/, and
the progress record says how much of them is whole, so an interrupted tokenize resumes
without deciding the documents before it again (the near index is rebuilt from the saved
signatures). The manifest then counts what went, per reason and per source, and
data/removed.json keeps a few removed examples of each reason.
"""

from __future__ import annotations

import array
import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from gptcli.console import UserError
from gptcli.data import decontam, dedup, quality, shingles
from gptcli.files import write_atomic
from gptcli.recipe import DataConfig, FiltersConfig

VERSION = 1  # of the rules' definitions: part of the fingerprint
STATE_DIR = ".curate"  # in data/: the decisions, keys and signatures of an unfinished pass
REMOVED_FILE = "removed.json"  # in data/: counts and a few removed examples per reason
EXAMPLES = 5  # removed examples kept per reason
EXAMPLE_CHARS = 2000  # of each, at most
BATCH_DOCS = 4096  # documents decided together (the n-gram hashing is vectorised per batch)
BATCH_CHARS = 1 << 22
DEDUP_REASONS = ("exact_duplicate", "near_duplicate")
REASONS = (
    *(f.name for f in dataclasses.fields(FiltersConfig)),
    "contaminated",
    *DEDUP_REASONS,
)
DROP = np.dtype([("doc", "<i8"), ("reason", "u1"), ("of", "<i8")])  # a decision file record

T = TypeVar("T")


def settings(cfg: DataConfig) -> dict | None:
    """What the corpus fingerprint records of the curation: None while every rule is off (so a
    fingerprint made before curation existed is unchanged)."""
    if not cfg.curated():
        return None
    out: dict[str, Any] = {"version": VERSION, "dedup": cfg.dedup}
    if cfg.dedup == "near":
        bands, rows = dedup.bands_for(cfg.dedup_threshold)
        out["near"] = {
            "threshold": cfg.dedup_threshold,
            "rensa": dedup.near_version(),
            "num_perm": dedup.NUM_PERM,
            "bands": bands,
            "rows": rows,
            "shingle": dedup.SHINGLE,
        }
    if filters := cfg.filters.on():
        out["filters"] = filters
    if cfg.decontaminate:
        out["decontaminate"] = decontam.identity(cfg.decontaminate)
        out["decontaminate_ngram"] = cfg.decontaminate_ngram
    return out


class Curator:
    """Decides, document by document, what the curation rules keep, and remembers it.

    folder holds the decision and index files; state (from a progress record) says how much
    of them is whole, or None to start over. Each pass over the corpus goes through
    curated(), which counts what it removes (per source and reason) and keeps examples.
    """

    def __init__(self, cfg: DataConfig, folder: Path, state: dict | None = None) -> None:
        if state is None:
            shutil.rmtree(folder, ignore_errors=True)
            state = {}
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.checks = quality.rules(cfg.filters)
        self.contamination = (
            decontam.Contamination(cfg.decontaminate, cfg.decontaminate_ngram)
            if cfg.decontaminate
            else None
        )
        budget = dedup.MEMORY_BUDGET
        self.exact = self.near = None
        if cfg.dedup != "none":
            self.exact = dedup.ExactIndex(folder, state.get("exact", 0), budget // 4)
        if cfg.dedup == "near":
            rows = state.get("near", 0)
            self.near = dedup.NearIndex(cfg.dedup_threshold, folder, rows, budget - budget // 4)
        # documents of data.dev indexed before the source's (-1: not yet; only dedup needs them)
        self.reserved = state.get("reserved", -1 if self.exact is not None else 0)
        self.decided = state.get("decided", 0)
        self._load_drops(state.get("drops", 0))
        self.counts: dict[str, dict[str, list[int]]] = {}
        self.examples: dict[str, list[dict]] = {}
        self.kept = 0

    def _load_drops(self, count: int) -> None:
        path = self.folder / "drops.bin"
        with open(path, "ab") as f:
            f.truncate(count * DROP.itemsize)
        saved = np.fromfile(path, dtype=DROP)
        self.drop_docs = array.array("q", saved["doc"].tolist())
        self.drop_reasons = array.array("B", saved["reason"].tolist())
        self.drop_of = array.array("q", saved["of"].tolist())
        self.drops_file = open(path, "ab", buffering=0)

    # ------------------------------------------------------------------ the passes

    def reserve(self, docs: Iterable[str]) -> None:
        """Index data.dev's documents first (once), so that a training copy of one goes; they
        themselves are never removed."""
        if self.reserved >= 0:
            return
        texts = list(docs)
        numbers = list(range(len(texts)))
        if self.exact is not None:
            for batch in _chunks(numbers):
                self.exact.check(batch, [texts[i] for i in batch])
        if self.near is not None:
            for batch in _chunks(numbers):
                self.near.check(batch, [texts[i] for i in batch])
        self.reserved = self.decided = len(texts)

    def curated(
        self, items: Iterable[T], text_of: Callable[[T], str], source_of: Callable[[T], str]
    ) -> Iterator[T]:
        """The items whose documents the rules keep, in order; what goes is counted by source
        (source_of) and reason. One call per pass over the corpus."""
        self.counts, self.examples, self.kept = {}, {}, 0
        first = max(self.reserved, 0)
        pending: list[tuple[int, T]] = []
        chars, cursor = 0, 0
        for number, item in enumerate(items, start=first):
            if number < self.decided:
                cursor = self._advance(cursor, number)
                dropped = cursor < len(self.drop_docs) and self.drop_docs[cursor] == number
                if not dropped:
                    self.kept += 1
                    yield item
                else:
                    reason = REASONS[self.drop_reasons[cursor]]
                    self._count(item, text_of, source_of, reason, number, self.drop_of[cursor])
                continue
            pending.append((number, item))
            chars += len(text_of(item))
            if len(pending) >= BATCH_DOCS or chars >= BATCH_CHARS:
                yield from self._decide(pending, text_of, source_of)
                pending, chars = [], 0
        yield from self._decide(pending, text_of, source_of)

    def _advance(self, cursor: int, number: int) -> int:
        while cursor < len(self.drop_docs) and self.drop_docs[cursor] < number:
            cursor += 1
        return cursor

    def _decide(
        self, pending: list[tuple[int, T]], text_of: Callable[[T], str], source_of
    ) -> Iterator[T]:
        """Decide a batch of new documents and record the decisions, then yield the kept items
        (a pass that stops early has still recorded the whole batch)."""
        if not pending:
            return
        numbers = [n for n, _ in pending]
        reasons, copies = self.reasons(numbers, [text_of(item) for _, item in pending])
        records = [
            (number, REASONS.index(reason), copy)
            for number, reason, copy in zip(numbers, reasons, copies, strict=True)
            if reason is not None
        ]
        for number, code, copy in records:
            self.drop_docs.append(number)
            self.drop_reasons.append(code)
            self.drop_of.append(copy)
        if records:
            self.drops_file.write(np.array(records, dtype=DROP).tobytes())
        self.decided = numbers[-1] + 1
        for (number, item), reason, copy in zip(pending, reasons, copies, strict=True):
            if reason is None:
                self.kept += 1
                yield item
            else:
                self._count(item, text_of, source_of, reason, number, copy)

    def reasons(self, numbers: list[int], texts: list[str]) -> tuple[list, list[int]]:
        """Each document's reason to go (None: kept) and the number of the document it copies
        (-1 when not a copy), trying the rules in order."""
        reasons: list[str | None] = [quality.failed(self.checks, t) for t in texts]
        copies = [-1] * len(texts)

        def alive() -> list[int]:
            return [i for i, r in enumerate(reasons) if r is None]

        if self.contamination is not None and (left := alive()):
            words = shingles.words([texts[i] for i in left])
            grams = shingles.ngrams(words, self.contamination.n, short=False)
            for i, hit in zip(left, self.contamination.hits(grams), strict=True):
                if hit:
                    reasons[i] = "contaminated"
        for index, reason in ((self.exact, "exact_duplicate"), (self.near, "near_duplicate")):
            if index is None or not (left := alive()):
                continue
            found = index.check([numbers[i] for i in left], [texts[i] for i in left])
            for i, copy in zip(left, found, strict=True):
                if copy is not None:
                    reasons[i], copies[i] = reason, copy
        return reasons, copies

    def _count(self, item, text_of, source_of, reason: str, number: int, copy: int) -> None:
        text = text_of(item)
        size = len(text.encode("utf-8", "surrogatepass"))
        entry = self.counts.setdefault(source_of(item), {}).setdefault(reason, [0, 0])
        entry[0] += 1
        entry[1] += size
        shown = self.examples.setdefault(reason, [])
        if len(shown) < EXAMPLES:
            example = {"source": source_of(item), "document": number, "bytes": size}
            if copy >= 0:
                example["copy_of"] = copy
            shown.append({**example, "text": text[:EXAMPLE_CHARS]})

    # ------------------------------------------------------------------ saving and reporting

    def save(self) -> dict:
        """Make the decisions and indexes so far durable; what a progress record keeps."""
        os.fsync(self.drops_file.fileno())
        if self.exact is not None:
            self.exact.sync()
        if self.near is not None:
            self.near.file.sync()
        return {
            "decided": self.decided,
            "reserved": self.reserved,
            "drops": len(self.drop_docs),
            "exact": self.exact.count if self.exact is not None else 0,
            "near": self.near.file.rows if self.near is not None else 0,
        }

    def close(self) -> None:
        """Close the files (a progress record may still need them)."""
        self.drops_file.close()
        if self.exact is not None:
            self.exact.close()
        if self.near is not None:
            self.near.file.close()

    def removed(self) -> dict[str, dict[str, dict[str, int]]]:
        """Per source, per reason: documents and bytes removed in the last pass."""
        return {
            source: {r: {"documents": by[r][0], "bytes": by[r][1]} for r in REASONS if r in by}
            for source, by in self.counts.items()
        }

    def empty_error(self, what: str) -> UserError:
        """Every document of the corpus was removed: say by what."""
        totals = totals_by_reason(self.removed())
        why = ", ".join(f"{v['documents']:,} {r}" for r, v in totals.items())
        return UserError(
            f"{what}: every document was removed by curation ({why}); loosen data.filters, "
            "data.dedup or data.decontaminate"
        )


def _chunks(numbers: list[int], size: int = BATCH_DOCS) -> Iterator[list[int]]:
    for i in range(0, len(numbers), size):
        yield numbers[i : i + size]


def totals_by_reason(removed: dict[str, dict[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
    """Documents and bytes removed per reason, over all sources."""
    out: dict[str, dict[str, int]] = {}
    for by in removed.values():
        for reason, v in by.items():
            t = out.setdefault(reason, {"documents": 0, "bytes": 0})
            t["documents"] += v["documents"]
            t["bytes"] += v["bytes"]
    return {r: out[r] for r in REASONS if r in out}


def write_removed(data_dir: Path, removed: dict, examples: dict[str, list[dict]]) -> None:
    """data/removed.json: the counts and the first few removed documents of each reason."""
    body = {"removed": removed, "examples": {r: examples[r] for r in REASONS if r in examples}}
    write_atomic(data_dir / REMOVED_FILE, json.dumps(body, indent=1).encode())


def read_removed(run_dir: Path) -> dict | None:
    """A run's data/removed.json, or None when it has none (no rule was on)."""
    path = run_dir / "data" / REMOVED_FILE
    if not path.is_file():
        return None
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot be read ({e}); tokenize again to rewrite it") from None
    if not isinstance(body, dict) or not isinstance(body.get("examples"), dict):
        raise UserError(f"{path}: not a removed-documents file (tokenize again to rewrite it)")
    return body


def task_examples(
    cfg: DataConfig, train: list[tuple[str, T]], dev: list[Any] | None
) -> tuple[list[T], Curator]:
    """A finetune task's training examples, (source, (where, record)) each, less those that
    decontamination and exact dedup remove; a training copy of a dev example goes too, and the
    dev examples themselves are never removed. Returns the kept (where, record) and the
    curator, whose counts and examples say what went."""
    if cfg.dedup == "near":
        raise UserError(
            "data.dedup: near applies to text corpora (pretraining, task: lm); a task's "
            "examples take none or exact"
        )
    if cfg.filters.on():
        raise UserError(
            "data.filters apply to text corpora (pretraining, task: lm), not to a task's "
            "examples: remove them from the recipe"
        )
    with tempfile.TemporaryDirectory(prefix="gptcli-curate-") as folder:
        curator = Curator(cfg, Path(folder))  # each process its own: torchrun ranks all read
        try:
            if dev is not None:
                curator.reserve(decontam.record_text(record) for _, record in dev)
            kept = curator.curated(
                train, lambda it: decontam.record_text(it[1][1]), lambda it: it[0]
            )
            return [example for _, example in kept], curator
        finally:
            curator.close()
