"""Tokenizing a corpus: train the BPE (or take the one given) and write the token shards."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from gptcli import console, tokenizer
from gptcli.data import stdin
from gptcli.data.corpus import corpus_bytes, fingerprint, same_corpus, sources, text_bytes
from gptcli.data.manifest import MANIFEST_VERSION, read_manifest, write_manifest
from gptcli.data.shards import ShardWriter, safe_pieces, unigram_bits_from_counts
from gptcli.data.split import routed, tail_split_chars
from gptcli.files import sha256_file
from gptcli.recipe import Recipe, TokenizerConfig


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
    return any(s.kind == "stdin" for s in sources(recipe.data))


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
    if not tok_path.is_file() or sha256_file(tok_path) != manifest.get("tokenizer_sha256"):
        return False
    itemsize = np.dtype(manifest["dtype"]).itemsize
    for name in ("train", "val"):
        shard = run_dir / "data" / f"{name}.bin"
        if not shard.is_file() or shard.stat().st_size != manifest[name]["tokens"] * itemsize:
            return False
    return True


def train_tokenizer(recipe: Recipe, run_dir: Path, tail: int | None, total: int | None):
    """BPE on the train split, or on a seeded sample of it when the corpus is big (total: the
    progress bar's file bytes; the sample's share comes from the text's size; of a corpus of
    unknown size, its first train_bytes)."""
    cfg = recipe.tokenizer
    size = text_bytes(recipe.data, run_dir)
    keep = 1.0 if size is None else min(1.0, cfg.train_bytes / max(size, 1))
    budget = cfg.train_bytes if size is None else None
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
            for split_name, text, _ in routed(recipe.data, recipe.seed, run_dir, tail, advance):
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


def sources_read(tally: dict) -> list[dict]:
    """Each source's kind, documents read and rows skipped by reason, for the manifest."""
    return [
        {**e, "skipped": {k: n for k, n in sorted(e["skipped"].items()) if n}}
        for e in tally.values()
    ]


def describe_source(entry: dict) -> str:
    """What was read from one source, for the tokenize log and `inspect`."""
    skipped = entry.get("skipped", {})
    why = ", ".join(f"{n:,} {reason}" for reason, n in skipped.items())
    rows = f"; {sum(skipped.values()):,} rows skipped ({why})" if skipped else ""
    return f"{entry['kind']}, {entry['documents']:,} documents read{rows}"


def prepare(
    recipe: Recipe, run_dir: Path, given_tokenizer: Path | None = None
) -> tuple[dict, bool]:
    """Train the tokenizer (unless given or already trained on this corpus) and write shards.

    Streams the corpus: once to count documents when there may be fewer than 100, once to
    train the BPE, once to encode, never holding more than a few batches. Returns the
    manifest and whether shards were written (so callers need not check the corpus again);
    skips all work when the manifest says the shards are up to date.
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
            manifest = {**manifest, "corpus": fp, "format_version": MANIFEST_VERSION}
            write_manifest(run_dir, manifest)
        return manifest, False
    settings = _tokenizer_key(recipe, given_tokenizer)
    started = time.perf_counter()
    console.info(f"tokenize: reading {recipe.data.source}")
    tail = tail_split_chars(recipe.data, recipe.seed, run_dir)
    total = corpus_bytes(recipe.data, run_dir)

    if given_tokenizer is not None:
        tok = tokenizer.load(given_tokenizer)
        tokenizer.save(tok, tok_path)
    elif (
        manifest
        and same_corpus(manifest.get("corpus"), fp)
        and manifest.get("tokenizer_settings") == settings
        and tok_path.is_file()
    ):
        tok = tokenizer.load(tok_path)
        console.info("tokenize: reusing the tokenizer trained on this corpus")
    else:
        tok = train_tokenizer(recipe, run_dir, tail, total)
        tokenizer.save(tok, tok_path)

    encoder = tokenizer.Encoder(tok)
    writer = ShardWriter(run_dir / "data", encoder, workers=max(1, os.cpu_count() or 1))
    tally: dict = {}
    try:
        with console.progress(unit="bytes") as bar:
            task = bar.add_task(f"encode ({encoder.name})", total=total)
            advance = lambda n: bar.advance(task, n)  # noqa: E731
            for split_name, text, ends in routed(
                recipe.data, recipe.seed, run_dir, tail, advance, tally
            ):
                writer.add(split_name, text, ends)
            stats = writer.commit()
    except BaseException:
        writer.abort()
        raise
    t, v = stats["train"], stats["val"]
    n_bytes, n_tokens = t["bytes"] + v["bytes"], t["tokens"] + v["tokens"]
    manifest = {
        "format_version": MANIFEST_VERSION,
        "corpus": fp,
        "tokenizer_settings": settings,
        "tokenizer_sha256": sha256_file(tok_path),
        "vocab_size": tok.get_vocab_size(),
        "dtype": encoder.dtype.name,
        "encoder": encoder.name,
        "train": t,
        "val": v,
        "bytes_per_token": round(n_bytes / max(n_tokens, 1), 4),
        "val_unigram_bpb": unigram_bits_from_counts(writer.val_counts, v["bytes"]),
        "elapsed_s": round(time.perf_counter() - started, 3),
        "sources": sources_read(tally),
    }
    write_manifest(run_dir, manifest)
    for entry in manifest["sources"]:
        console.info(f"tokenize: {entry['source']}: {describe_source(entry)}")
    console.info(
        f"tokenize: {t['documents'] + v['documents']:,} documents, {n_bytes / 1e6:.2f} MB; "
        f"train {t['tokens']:,} tokens ({t['bytes'] / 1e6:.2f} MB) / "
        f"val {v['tokens']:,} tokens ({v['bytes'] / 1e6:.2f} MB); "
        f"{manifest['bytes_per_token']:.2f} bytes per token; {manifest['elapsed_s']:.1f}s "
        f"({n_bytes / 1e6 / max(manifest['elapsed_s'], 1e-9):.1f} MB/s, {encoder.name})"
    )
    return manifest, True
