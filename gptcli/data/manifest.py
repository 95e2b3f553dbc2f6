"""data/manifest.json: what the shards were made from, and their token counts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from gptcli import console, stories
from gptcli.console import UserError
from gptcli.files import naming_file, read_json, typed_fields, write_atomic
from gptcli.recipe import need

MANIFEST_VERSION = 5  # 3: builtin corpora fingerprinted by stories.VERSION; 4: sources read;
# 5: max_tokens and stopped_early
# 6: curation (documents removed by data.dedup, filters, decontaminate). Only a manifest that has
# it is written as 6, so the manifest of an uncurated corpus stays what older gptcli reads.
CURATED_VERSION = 6
# The manifest's keys and their types (checked as recipe keys of these types are).
MANIFEST_TYPES: dict[str, Any] = {
    "format_version": int,
    "corpus": dict,
    "tokenizer_settings": dict,
    "tokenizer_sha256": str,
    "vocab_size": int,
    "dtype": Literal["uint16", "uint32"],
    "encoder": str,
    "train": dict,
    "val": dict,
    "bytes_per_token": float,
    "val_unigram_bpb": float,
    "elapsed_s": float,
    "sources": list,
    "max_tokens": int,
    "stopped_early": bool,
    "curation": dict,
}
MANIFEST_KEYS = set(MANIFEST_TYPES)
SPLIT_COUNTS = ("documents", "bytes", "tokens")  # each split's entry: counts, all >= 0


def read_manifest(run_dir: Path) -> dict | None:
    """A run's data/manifest.json, checked (see read_manifest_file), or None when absent."""
    path = run_dir / "data" / "manifest.json"
    return read_manifest_file(path) if path.is_file() else None


def read_manifest_file(path: Path) -> dict:
    """A shard folder's manifest.json: each key checked by type, the shape of the shards
    (dtype, vocab_size, each split's counts) by value; exit 2 naming the file and key."""
    try:
        manifest = read_json(path, CURATED_VERSION, MANIFEST_KEYS)
    except UserError as e:
        if "not valid JSON" in str(e):
            raise UserError(f"{e} (delete it to rebuild the shards)") from None
        raise
    missing = [k for k in ("dtype", "vocab_size", "train", "val") if k not in manifest]
    if missing:
        raise UserError(
            f"{path}: missing key '{missing[0]}' (the shards cannot be read without it)"
        )
    manifest.update(typed_fields(path, manifest, MANIFEST_TYPES))
    with naming_file(path):
        need("vocab_size", manifest["vocab_size"], manifest["vocab_size"] > 0, "> 0")
        for split in ("train", "val"):
            counts = manifest[split]
            ok = type(counts.get("tokens")) is int and all(
                type(counts.get(k, 0)) is int and counts.get(k, 0) >= 0 for k in SPLIT_COUNTS
            )
            need(split, counts, ok, f"a mapping of {', '.join(SPLIT_COUNTS)} (integers >= 0)")
    if manifest.get("format_version", 0) < 3:
        _upgrade_builtin_fingerprint(path, manifest)
    return manifest


def _upgrade_builtin_fingerprint(path: Path, manifest: dict) -> None:
    """Manifests before version 3 fingerprinted a builtin: corpus by the generator's source
    bytes; take such a corpus as unchanged (it cannot be checked) rather than refuse the run."""
    builtin = [s for s in manifest.get("corpus", {}).get("sources", []) if "generator" in s]
    for entry in builtin:
        entry["generator"] = stories.VERSION
    if builtin:
        console.warn(
            f"{path} was written by an older gptcli: its builtin corpus is taken as unchanged "
            "(it is now fingerprinted by the generator's version)"
        )


def write_manifest(run_dir: Path, manifest: dict) -> None:
    write_atomic(run_dir / "data" / "manifest.json", json.dumps(manifest, indent=2).encode())
