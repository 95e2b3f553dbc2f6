"""data/manifest.json: what the shards were made from, and their token counts."""

from __future__ import annotations

import json
from pathlib import Path

from gptcli import console, stories
from gptcli.console import UserError
from gptcli.files import write_atomic

MANIFEST_VERSION = 5  # 3: builtin corpora fingerprinted by stories.VERSION; 4: sources read;
# 5: max_tokens and stopped_early
MANIFEST_KEYS = {
    "format_version",
    "corpus",
    "tokenizer_settings",
    "tokenizer_sha256",
    "vocab_size",
    "dtype",
    "encoder",
    "train",
    "val",
    "bytes_per_token",
    "val_unigram_bpb",
    "elapsed_s",
    "sources",
    "max_tokens",
    "stopped_early",
}


def read_manifest(run_dir: Path) -> dict | None:
    path = run_dir / "data" / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{path}: not valid JSON (delete it to rebuild the shards)") from None
    version = manifest.get("format_version", 0)
    if version > MANIFEST_VERSION:
        raise UserError(
            f"{path}: format_version {version} is newer than this gptcli reads "
            f"({MANIFEST_VERSION}); upgrade gptcli"
        )
    unknown = sorted(set(manifest) - MANIFEST_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown key {unknown[0]!r} (written by a newer gptcli?)")
    if version < 3:
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
