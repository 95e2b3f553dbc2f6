"""Tokenizing a corpus: train the BPE (or take the one given) and write the token shards."""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from gptcli import console, tokenizer
from gptcli.console import UserError
from gptcli.data import curate, registry, stdin
from gptcli.data.corpus import corpus_bytes, fingerprint, label, same_corpus, text_bytes
from gptcli.data.curate import Curator
from gptcli.data.manifest import CURATED_VERSION, MANIFEST_VERSION, read_manifest, write_manifest
from gptcli.data.shards import ShardWriter, partial_paths, safe_pieces, unigram_bits_from_counts
from gptcli.data.split import routed, tail_split_chars
from gptcli.files import sha256_file, write_atomic
from gptcli.recipe import Recipe, TokenizerConfig

CHARS_PER_TOKEN = 4  # about how much text a token covers: with data.max_tokens, the BPE samples
# the first CHARS_PER_TOKEN * max_tokens characters


def _tokenizer_settings(cfg: TokenizerConfig) -> dict:
    return {
        "vocab_size": cfg.vocab_size,
        "special_tokens": cfg.special_tokens,
        "min_frequency": cfg.min_frequency,
        "train_bytes": cfg.train_bytes,
    }


def _tokenizer_key(recipe: Recipe, given_tokenizer: Path | None) -> dict:
    if given_tokenizer is not None:
        return {"from": sha256_file(given_tokenizer)}
    return _tokenizer_settings(recipe.tokenizer)


def _uses_stdin(recipe: Recipe) -> bool:
    return any(registry.spec_kind(s.path) == "stdin" for s in recipe.data.sources())


def is_up_to_date(
    recipe: Recipe, run_dir: Path, given_tokenizer: Path | None = None, fp: dict | None = None
) -> bool:
    """True when the run's shards were made from this corpus with these tokenizer settings."""
    manifest = read_manifest(run_dir)
    if not manifest:
        return False
    if _uses_stdin(recipe) and not stdin.path(run_dir).is_file():
        return False
    tok_path = run_dir / tokenizer.TOKENIZER_FILE
    if fp is None:
        fp = fingerprint(recipe.data, recipe.seed, run_dir, manifest.get("corpus"))
    if not same_corpus(manifest.get("corpus"), fp):
        return False
    if manifest.get("tokenizer_settings") != _tokenizer_key(recipe, given_tokenizer):
        return False
    if manifest.get("max_tokens", 0) != recipe.data.max_tokens:
        return False
    if not tok_path.is_file() or sha256_file(tok_path) != manifest.get("tokenizer_sha256"):
        return False
    itemsize = np.dtype(manifest["dtype"]).itemsize
    for name in ("train", "val"):
        shard = run_dir / "data" / f"{name}.bin"
        if not shard.is_file() or shard.stat().st_size != manifest[name]["tokens"] * itemsize:
            return False
    return True


def train_tokenizer(
    recipe: Recipe,
    run_dir: Path,
    tail: int | None,
    total: int | None,
    curator: Curator | None = None,
):
    """BPE on the train split, or on a seeded sample of it when the corpus is big (total: the
    progress bar's file bytes; the sample's share comes from the text's size; of a corpus of
    unknown size, its first train_bytes). With data.max_tokens only the start of the corpus
    that the shards will take is sampled, so a small sample of a huge corpus does not read
    all of it. The curator's rules apply (the BPE learns from the text the shards keep)."""
    cfg = recipe.tokenizer
    reach = text_bytes(recipe.data, run_dir)
    if recipe.data.max_tokens:
        cap = CHARS_PER_TOKEN * recipe.data.max_tokens
        reach = cap if reach is None else min(reach, cap)
    keep = 1.0 if reach is None else min(1.0, cfg.train_bytes / max(reach, 1))
    budget = cfg.train_bytes if reach is None else None
    rng = random.Random(recipe.seed + 2)
    note = "" if keep >= 1 else f" on a {keep:.0%} sample (tokenizer.train_bytes)"
    if budget is not None:
        note = f" on the first {budget:,} bytes of text (tokenizer.train_bytes)"
    console.info(f"tokenize: training a {cfg.vocab_size}-token byte-level BPE{note}")
    t0 = time.perf_counter()
    with console.progress(unit="bytes") as bar:
        task = bar.add_task("train BPE", total=total)

        def batches() -> Iterator[list[str]]:
            batch: list[str] = []
            taken = 0
            advance = lambda n: bar.advance(task, n)  # noqa: E731
            seen = 0
            docs = routed(recipe.data, recipe.seed, run_dir, tail, advance, curator=curator)
            for split_name, text, _ in docs:
                seen += len(text)
                if reach is not None and seen > reach:
                    break
                if split_name == "train" and (keep >= 1 or rng.random() < keep):
                    batch.extend(safe_pieces(text))
                    taken += len(text)
                    if len(batch) >= 1024:
                        yield batch
                        batch = []
                    if budget is not None and taken >= budget:
                        break
            if batch:
                yield batch

        tok = tokenizer.train(batches(), cfg.vocab_size, cfg.special_tokens, cfg.min_frequency)
    console.info(f"tokenize: BPE trained in {time.perf_counter() - t0:.1f}s")
    return tok


def sources_read(tally: dict, removed: dict | None = None) -> list[dict]:
    """Each source's kind, documents read and rows skipped by reason, for the manifest; with
    removed (curation's counts), the documents and bytes each rule removed from it."""
    out = [
        {**e, "skipped": {k: n for k, n in sorted(e["skipped"].items()) if n}}
        for e in tally.values()
    ]
    if removed is not None:
        out = [{**e, "removed": removed.get(e["source"], {})} for e in out]
    return out


def describe_source(entry: dict) -> str:
    """What was read from one source, for the tokenize log and `inspect`."""
    skipped = entry.get("skipped", {})
    why = ", ".join(f"{n:,} {reason}" for reason, n in skipped.items())
    rows = f"; {sum(skipped.values()):,} rows skipped ({why})" if skipped else ""
    gone = entry.get("removed", {})
    if gone:
        why = ", ".join(f"{v['documents']:,} {reason}" for reason, v in gone.items())
        total = sum(v["documents"] for v in gone.values())
        size = sum(v["bytes"] for v in gone.values())
        rows += f"; {total:,} documents ({size / 1e6:,.2f} MB) removed ({why})"
    return f"{entry['kind']}, {entry['documents']:,} documents read{rows}"


PROGRESS_FILE = ".progress.json"  # how far an unfinished encoding pass got, in data/
CHUNK_CHARS = 64 << 20  # characters of text encoded between two progress records
SYNC_CHARS = 1 << 18  # with data.max_tokens: this close to the cap, flush after each document


def _progress_path(run_dir: Path) -> Path:
    return run_dir / "data" / PROGRESS_FILE


def read_progress(run_dir: Path, fp: dict, settings: dict, max_tokens: int) -> dict | None:
    """The progress record of an interrupted encoding pass over this very corpus, with these
    settings and the tokenizer it used, or None (start over)."""
    path = _progress_path(run_dir)
    try:
        progress = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    tok_path = run_dir / tokenizer.TOKENIZER_FILE
    parts = partial_paths(run_dir / "data")
    try:
        whole = all(p.stat().st_size >= progress["sizes"][s] for s, p in parts.items())
    except (OSError, KeyError, TypeError):
        return None
    if not (
        whole
        and same_corpus(progress.get("corpus"), fp)
        and progress.get("tokenizer_settings") == settings
        and progress.get("max_tokens") == max_tokens
        and tok_path.is_file()
        and sha256_file(tok_path) == progress.get("tokenizer_sha256")
        and isinstance(progress.get("items"), int)
    ):
        return None
    return progress


def discard_progress(run_dir: Path) -> None:
    """Forget an unfinished encoding pass (the corpus or settings changed, or it finished)."""
    _progress_path(run_dir).unlink(missing_ok=True)
    for p in partial_paths(run_dir / "data").values():
        p.unlink(missing_ok=True)
    shutil.rmtree(run_dir / "data" / curate.STATE_DIR, ignore_errors=True)


def save_progress(run_dir: Path, record: dict) -> None:
    """Record, atomically, how far the encoding pass got (called after a durable flush)."""
    write_atomic(_progress_path(run_dir), json.dumps(record).encode())


def with_curation(record: dict, curator: Curator | None) -> dict:
    """A progress record that also says how much of the curator's decisions and indexes is
    durable (they are synced first)."""
    return record if curator is None else {**record, "curation": curator.save()}


def _next_step(writer: ShardWriter, chars: int, max_tokens: int) -> int:
    """Characters to encode before the next flush: a chunk, or with data.max_tokens, half the
    estimated way to the cap (so the cap is met at a flush, a document at a time at the end).
    Depends only on what was written, so a resumed run flushes where the first run did."""
    if not max_tokens:
        return CHUNK_CHARS
    left = max_tokens - writer.tokens
    per_token = chars / writer.tokens if writer.tokens else 1.0
    step = int(left * per_token / 2)
    return 0 if step < SYNC_CHARS else min(step, CHUNK_CHARS)


def _documents(writer: ShardWriter) -> int:
    return writer.stats["train"]["documents"] + writer.stats["val"]["documents"]


def _resuming(writer: ShardWriter, total: int) -> str:
    done = writer.stats["train"]["bytes"] + writer.stats["val"]["bytes"]
    return (
        f"tokenize: resuming after {done / 1e6:,.1f} MB of text ({_documents(writer):,} "
        f"documents; the corpus is {total / 1e6:,.1f} MB on disk)"
    )


def _encode(
    recipe: Recipe,
    run_dir: Path,
    tail: int | None,
    writer: ShardWriter,
    record: dict,
    tally: dict,
    curator: Curator | None = None,
) -> bool:
    """Route and encode the corpus into writer, recording progress after every chunk; items
    an interrupted run already wrote (record["items"]) are read and counted, not encoded.
    True when data.max_tokens stopped it before the end of the corpus."""
    max_tokens, skip = recipe.data.max_tokens, record["items"]
    total = corpus_bytes(recipe.data, run_dir)
    with console.progress("documents", unit="bytes") as bar:
        task = bar.add_task(f"encode ({writer.encoder.name})", total=total)

        def advance(n: int) -> None:
            bar.advance(task, n)

        items, chars, since, step = 0, 0, 0, -1
        for split_name, text, ends in routed(
            recipe.data, recipe.seed, run_dir, tail, advance, tally, curator
        ):
            items += 1
            chars += len(text)
            if items % 1024 == 0:
                bar.update(task, documents=f"{_documents(writer):,} documents")
            if items <= skip:
                writer.skip(split_name, text, ends)
                if items == skip:
                    console.info(_resuming(writer, total))
                continue
            if step < 0:
                step = _next_step(writer, chars - len(text), max_tokens)
            writer.add(split_name, text, ends)
            since += len(text)
            if since < step:
                continue
            durable = since >= CHUNK_CHARS or not max_tokens
            sizes = writer.flush(durable=durable)
            if durable:
                done = {**record, "items": items, "sizes": sizes}
                save_progress(run_dir, with_curation(done, curator))
            if max_tokens and writer.tokens >= max_tokens:
                return True
            since, step = 0, _next_step(writer, chars, max_tokens)
    return False


def prepare(
    recipe: Recipe, run_dir: Path, given_tokenizer: Path | None = None
) -> tuple[dict, bool]:
    """Train the tokenizer (unless given or already trained on this corpus) and write shards.

    Streams the corpus: once to count documents when there may be fewer than 100, once to
    train the BPE, once to encode, never holding more than a few batches. An interrupted
    encoding pass continues from its last progress record. Returns the manifest and whether
    shards were written (so callers need not check the corpus again); skips all work when the
    manifest says the shards are up to date.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "data").mkdir(exist_ok=True)
    tok_path = run_dir / tokenizer.TOKENIZER_FILE
    if _uses_stdin(recipe):
        stdin.spool_stdin(run_dir)
    manifest = read_manifest(run_dir)
    fp = fingerprint(recipe.data, recipe.seed, run_dir, (manifest or {}).get("corpus"))
    if is_up_to_date(recipe, run_dir, given_tokenizer, fp):
        console.info(f"tokenize: shards in {run_dir / 'data'} are up to date")
        if manifest["format_version"] < MANIFEST_VERSION:  # upgraded on reading: keep it so
            manifest = {"max_tokens": 0, "stopped_early": False, **manifest}
            manifest.update(corpus=fp, format_version=MANIFEST_VERSION)
            write_manifest(run_dir, manifest)
        return manifest, False
    settings = _tokenizer_key(recipe, given_tokenizer)
    max_tokens = recipe.data.max_tokens
    started = time.perf_counter()
    console.info(f"tokenize: reading {', '.join(label(s) for s in recipe.data.sources())}")
    if given_tokenizer is not None:
        tokenizer.save(tokenizer.load(given_tokenizer), tok_path)
    progress = read_progress(run_dir, fp, settings, max_tokens)
    if progress is None:
        discard_progress(run_dir)
    curator = None
    if recipe.data.curated():  # after the progress record: it says what of the curation is whole
        state = progress and progress.get("curation")
        curator = Curator(recipe.data, run_dir / "data" / curate.STATE_DIR, state)
    try:
        manifest = _tokenize(recipe, run_dir, given_tokenizer, manifest, fp, progress, curator)
    except UserError:
        discard_progress(run_dir)  # the input must change: nothing to continue
        raise
    finally:
        if curator is not None:
            curator.close()
    if curator is not None:  # finished: the decisions and indexes are not needed any more
        shutil.rmtree(run_dir / "data" / curate.STATE_DIR, ignore_errors=True)
    manifest["elapsed_s"] = round(time.perf_counter() - started, 3)
    write_manifest(run_dir, manifest)
    _report(manifest, recipe)
    return manifest, True


def _tokenize(
    recipe: Recipe,
    run_dir: Path,
    given_tokenizer: Path | None,
    manifest: dict | None,
    fp: dict,
    progress: dict | None,
    curator: Curator | None,
) -> dict:
    """The tokenizer (trained, reused or given) and the shards; returns their manifest."""
    tok_path = run_dir / tokenizer.TOKENIZER_FILE
    settings = _tokenizer_key(recipe, given_tokenizer)
    tail = tail_split_chars(recipe.data, recipe.seed, run_dir, curator)
    if given_tokenizer is not None:
        tok = tokenizer.load(tok_path)
    elif progress is not None or (
        manifest
        and same_corpus(manifest.get("corpus"), fp)
        and manifest.get("tokenizer_settings") == settings
        and tok_path.is_file()
    ):
        tok = tokenizer.load(tok_path)
        console.info("tokenize: reusing the tokenizer trained on this corpus")
    else:
        total = corpus_bytes(recipe.data, run_dir)
        tok = train_tokenizer(recipe, run_dir, tail, total, curator)
        tokenizer.save(tok, tok_path)
    record = progress or {
        "corpus": fp,
        "tokenizer_settings": settings,
        "max_tokens": recipe.data.max_tokens,
        "tokenizer_sha256": sha256_file(tok_path),
        "items": 0,
        "sizes": {"train": 0, "val": 0},
    }
    encoder = tokenizer.Encoder(tok)
    workers = max(1, os.cpu_count() or 1)
    writer = ShardWriter(run_dir / "data", encoder, workers, progress and progress["sizes"])
    if progress is None:
        save_progress(run_dir, with_curation(record, curator))  # a rerun reuses the tokenizer
    tally: dict = {}
    try:
        stopped = _encode(recipe, run_dir, tail, writer, record, tally, curator)
        stats = writer.commit()
    except BaseException:
        writer.close()
        raise
    _progress_path(run_dir).unlink(missing_ok=True)
    return _manifest(run_dir, recipe, writer, stats, fp, settings, stopped, tally, curator)


def _manifest(
    run_dir: Path,
    recipe: Recipe,
    writer: ShardWriter,
    stats: dict,
    fp: dict,
    settings: dict,
    stopped: bool,
    tally: dict,
    curator: Curator | None,
) -> dict:
    """The manifest of the committed shards (and, with curation, data/removed.json)."""
    t, v = stats["train"], stats["val"]
    n_bytes, n_tokens = t["bytes"] + v["bytes"], t["tokens"] + v["tokens"]
    removed = curator.removed() if curator is not None else None
    manifest = {
        "format_version": MANIFEST_VERSION if curator is None else CURATED_VERSION,
        "corpus": fp,
        "tokenizer_settings": settings,
        "tokenizer_sha256": sha256_file(run_dir / tokenizer.TOKENIZER_FILE),
        "vocab_size": writer.vocab,
        "dtype": writer.encoder.dtype.name,
        "encoder": writer.encoder.name,
        "train": t,
        "val": v,
        "bytes_per_token": round(n_bytes / max(n_tokens, 1), 4),
        "val_unigram_bpb": unigram_bits_from_counts(writer.val_counts, v["bytes"]),
        "elapsed_s": 0.0,
        "sources": sources_read(tally, removed),
        "max_tokens": recipe.data.max_tokens,
        "stopped_early": stopped,
    }
    if curator is None:
        (run_dir / "data" / curate.REMOVED_FILE).unlink(missing_ok=True)  # of a curated run
    else:
        manifest["curation"] = {
            "removed": curate.totals_by_reason(removed or {}),
            "examples": f"data/{curate.REMOVED_FILE}",
        }
        curate.write_removed(run_dir / "data", removed or {}, curator.examples)
    return manifest


def _report(manifest: dict, recipe: Recipe) -> None:
    """Log what was made: each source, what curation removed, the shards."""
    t, v = manifest["train"], manifest["val"]
    n_bytes, n_tokens = t["bytes"] + v["bytes"], t["tokens"] + v["tokens"]
    for entry in manifest["sources"]:
        console.info(f"tokenize: {entry['source']}: {describe_source(entry)}")
    if manifest["stopped_early"]:
        console.info(
            f"tokenize: stopped at {n_tokens:,} tokens (data.max_tokens "
            f"{recipe.data.max_tokens:,}); the rest of the corpus was not read"
        )
    elapsed = manifest["elapsed_s"]
    console.info(
        f"tokenize: {t['documents'] + v['documents']:,} documents, {n_bytes / 1e6:.2f} MB; "
        f"train {t['tokens']:,} tokens ({t['bytes'] / 1e6:.2f} MB) / "
        f"val {v['tokens']:,} tokens ({v['bytes'] / 1e6:.2f} MB); "
        f"{manifest['bytes_per_token']:.2f} bytes per token; {elapsed:.1f}s "
        f"({n_bytes / 1e6 / max(elapsed, 1e-9):.1f} MB/s, {manifest['encoder']})"
    )
