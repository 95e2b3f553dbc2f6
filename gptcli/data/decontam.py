"""Decontamination: a training document that shares a word n-gram (13 words by default, as
GPT-3 did) with an evaluation set goes, so the set's scores measure what the model learned
rather than what it read (data.decontaminate).

An entry of data.decontaminate is a file, directory or glob (text files by their documents,
other formats by every string field of each record), or an lm-evaluation-harness task name
whose evaluation documents are read through lm-eval. Words are lower-cased runs of letters
and digits (shingles.words); an evaluation document shorter than n words cannot match.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import numpy as np

from gptcli import console
from gptcli.console import UserError
from gptcli.data import hub, paths, registry, shingles, text
from gptcli.data.streams import Reading
from gptcli.files import sha256_file

INSTALL = "pip install 'gptcli[eval]'"
# gptcli's own lm-eval task definitions (local files): found without indexing the harness
BUNDLED_TASKS = Path(__file__).resolve().parents[1] / "recipes" / "eval"
BATCH_DOCS = 2048


def record_text(record: object) -> str:
    """Every string in a record (nested fields and lists too), in order, one per line."""
    if isinstance(record, str):
        return record
    if isinstance(record, dict):
        parts = [record_text(v) for v in record.values()]
    elif isinstance(record, (list, tuple)):
        parts = [record_text(v) for v in record]
    else:
        return ""
    return "\n".join(p for p in parts if p)


def entry_files(entry: str) -> list[Path] | None:
    """The files an entry names, or None when it is a task name."""
    p = Path(entry).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir() or any(c in entry for c in "*?["):
        try:
            return paths.source_files(entry)
        except UserError:
            pass
    elif "/" not in entry and "\\" not in entry and not registry.known_format(entry):
        return None
    raise UserError(
        f"data.decontaminate {entry!r}: no such file, or no {registry.listed_suffixes()} files "
        "in it (name files, directories, globs or lm-eval task names)"
    )


def identity(entries: list[str]) -> list[dict]:
    """What each entry is, for the fingerprint: its files' paths, sizes and sha256, or the task
    name and the lm-eval version that reads it."""
    out: list[dict] = []
    for entry in entries:
        files = entry_files(entry)
        if files is None:
            out.append({"task": entry, "lm_eval": _lm_eval_version(entry)})
        else:
            out.append(
                {
                    "entry": entry,
                    "files": [
                        {"path": str(f), "bytes": f.stat().st_size, "sha256": sha256_file(f)}
                        for f in files
                    ],
                }
            )
    return out


def _lm_eval_version(task: str) -> str:
    """lm-eval's version (what reads a task's documents), or exit 2 with the install line."""
    try:
        importlib.import_module("lm_eval.tasks")  # heavy: only where a task is named
    except ImportError:
        raise UserError(
            f"data.decontaminate: {task!r} is not a file, so it is read as an lm-eval task, "
            f"which needs lm-evaluation-harness: {INSTALL}"
        ) from None
    return metadata.version("lm_eval")


def file_documents(f: Path) -> Iterator[str]:
    if registry.format_of(f) is registry.TEXT:
        yield from text.documents(f, Reading(errors="replace"))
        return
    for _, record in registry.reader(registry.records_format(f)).records(f):
        yield record_text(record)


@contextlib.contextmanager
def _quiet_harness() -> Iterator[None]:
    """lm-eval logs at INFO and may print: its lines stay off stdout (the command's product)."""
    import datasets  # lm-eval's own dependency

    loggers = [logging.getLogger(n) for n in ("lm_eval", "lm-eval", "datasets")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # "Generating validation split" is no news to the user
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        if bars:
            datasets.enable_progress_bars()


def task_documents(name: str) -> list[str]:
    """The evaluation documents (test, else validation split) of an lm-eval task or group,
    every string field of each."""
    _lm_eval_version(name)
    with _quiet_harness():
        from lm_eval.tasks import TaskManager

        manager = TaskManager(include_path=[str(BUNDLED_TASKS)], include_defaults=False)
        if name not in manager.all_tasks:
            hub.check_reachable(f"data.decontaminate task {name!r}")
            manager = TaskManager(include_path=[str(BUNDLED_TASKS)])
            if name not in manager.all_tasks:
                raise UserError(
                    f"data.decontaminate: {name!r} is neither a file nor an lm-eval task "
                    "(see `lm-eval ls tasks`)"
                )
        try:
            tasks = manager.load([name])["tasks"]
            return [record_text(doc) for task in tasks.values() for doc in task.eval_docs]
        except Exception as e:  # noqa: BLE001 - the harness and datasets raise many kinds
            reason = " ".join(str(e).split())[:200] or type(e).__name__
            cached = " (offline: its data is not in the local cache)" if hub.offline() else ""
            raise UserError(
                f"data.decontaminate: task {name!r}: its data could not be loaded{cached}: "
                f"{reason}; name a local file of its documents instead"
            ) from None


class Contamination:
    """The word n-grams of the evaluation sets, as one sorted array of 64-bit hashes."""

    def __init__(self, entries: list[str], n: int) -> None:
        self.n = n
        found: list[np.ndarray] = []
        for entry in entries:
            files = entry_files(entry)
            docs = (
                iter(task_documents(entry))
                if files is None
                else (d for f in files for d in file_documents(f))
            )
            before = sum(map(len, found))
            for batch in _batches(docs):
                found.append(shingles.ngrams(shingles.words(batch), n, short=False).hashes)
            if sum(map(len, found)) == before:
                console.warn(f"data.decontaminate {entry!r}: no document of {n} words or more")
        self.hashes = np.unique(np.concatenate(found)) if found else np.zeros(0, np.uint64)

    def hits(self, grams: shingles.Ngrams) -> np.ndarray:
        """Which documents of a batch share an n-gram with the evaluation sets."""
        ndocs = len(grams.starts) - 1
        if not len(self.hashes) or not len(grams.hashes):
            return np.zeros(ndocs, dtype=bool)
        pos = np.minimum(np.searchsorted(self.hashes, grams.hashes), len(self.hashes) - 1)
        shared = self.hashes[pos] == grams.hashes
        return np.bincount(grams.doc_of_each()[shared], minlength=ndocs) > 0


def _batches(docs: Iterator[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    for d in docs:
        batch.append(d)
        if len(batch) >= BATCH_DOCS:
            yield batch
            batch = []
    if batch:
        yield batch
