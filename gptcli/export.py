"""`gptcli export`: write a model where other tools can use it (HF, GGUF) or as a standalone
gptcli checkpoint with LoRA adapters merged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gptcli import gguf_format, hf_format, load
from gptcli.checkpoint_tensors import export_gptcli
from gptcli.console import UserError

WRITERS = {"hf": hf_format.export_hf, "gguf": gguf_format.export_gguf, "gptcli": export_gptcli}


def export(checkpoint_path: str, fmt: str, out: str) -> dict[str, Any]:
    """Returns what was written (for --json and the log line)."""
    if fmt not in WRITERS:
        raise UserError(f"--format must be hf, gguf or gptcli, got {fmt!r}")
    loaded = load.load(checkpoint_path)
    if fmt != "gptcli" and loaded.config.n_classes:
        raise UserError(
            f"{loaded.path} is a classifier: its task head has no place in an HF or GGUF "
            "language model (use --format gptcli, or export the run it was finetuned from)"
        )
    folder = WRITERS[fmt](loaded, Path(out))
    files = sorted(p.name for p in folder.iterdir())
    return {
        "checkpoint": str(loaded.path),
        "format": fmt,
        "out": str(folder),
        "family": "gptcli" if fmt == "gptcli" else hf_format.family(loaded.config),
        "files": files,
        "bytes": sum((folder / f).stat().st_size for f in files),
    }
