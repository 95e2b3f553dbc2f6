"""Finding and describing gptcli's own checkpoints, without torch.

A checkpoint is a folder checkpoints/step-NNNNNNN/ holding model.safetensors, config.json,
tokenizer.json and state.json; checkpoint_tensors writes it under a temporary name and renames
it into place when complete, so a folder here is either whole or absent. What this module
reads (paths, the JSON metadata and its format version, tensor names and shapes) needs no
torch, so finding checkpoints stays fast: an up-to-date `gptcli tokenize` never loads it.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

from safetensors import SafetensorError, safe_open

from gptcli import console
from gptcli.console import UserError
from gptcli.recipe import ModelConfig

FORMAT_VERSION = 1
CKPT_PREFIX = "step-"
REQUIRED_FILES = ("model.safetensors", "config.json", "tokenizer.json", "state.json")
STATE_KEYS = {
    "step",
    "tokens_seen",
    "elapsed_s",
    "data_position",
    "metrics",
    "train",
    "versions",
    "optimizer_param_groups",
    "global_batch",
    "auto",  # what dtype: auto and compile: auto decided, and on which device type
}


# --------------------------------------------------------------------------- finding checkpoints


def is_checkpoint(path: Path) -> bool:
    return path.is_dir() and all((path / f).is_file() for f in REQUIRED_FILES)


def step_of(path: Path) -> int:
    return int(path.name.removeprefix(CKPT_PREFIX))


def checkpoint_folder(run_dir: Path, step: int) -> Path:
    """Where a run's checkpoint of step goes (its checkpoints/ folder made if need be)."""
    folder = run_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{CKPT_PREFIX}{step:07d}"


def run_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest step first (temp folders start with '.')."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = [
        p
        for p in folder.glob(f"{CKPT_PREFIX}*")
        if p.name.removeprefix(CKPT_PREFIX).isdigit() and is_checkpoint(p)
    ]
    return sorted(found, key=step_of)


def newest_in_run(run_dir: Path) -> Path | None:
    found = run_checkpoints(run_dir)
    return found[-1] if found else None


def newest_under(root: Path) -> Path | None:
    """The highest step of the run whose newest checkpoint was written last: the run someone
    trained most recently, not the one with the largest step number."""
    best: tuple[float, Path] | None = None
    if not root.is_dir():
        return None
    for run in root.iterdir():
        ckpt = newest_in_run(run) if run.is_dir() else None
        if ckpt is not None:
            written = max(run_ckpt.stat().st_mtime for run_ckpt in run_checkpoints(run))
            if best is None or written > best[0]:
                best = (written, ckpt)
    return best[1] if best else None


def resolve(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder's newest checkpoint."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"checkpoint not found: {p}")
    if (p / "model.safetensors").is_file():
        if not is_checkpoint(p):
            missing = [f for f in REQUIRED_FILES if not (p / f).is_file()]
            raise UserError(f"{p}: incomplete checkpoint, missing {', '.join(missing)}")
        return p
    if p.is_dir():
        found = newest_in_run(p)
        if found is not None:
            return found
    raise UserError(f"{p}: not a checkpoint or a run folder with a complete checkpoint")


def weights_file(path: Path) -> Path:
    """What to name when a folder's weights are wrong: its model.safetensors when it has one."""
    return path / "model.safetensors" if (path / "model.safetensors").is_file() else path


# --------------------------------------------------------------------------- JSON with versions


def read_versioned_json(path: Path, known: set[str] | None = None) -> dict:
    """Read config/state JSON: refuse a newer format or unknown keys, exit-2 style."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    version = data.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(
            f"{path}: format_version {version!r} is newer than this gptcli reads "
            f"({FORMAT_VERSION}); upgrade gptcli"
        )
    if known is not None:
        unknown = sorted(set(data) - known - {"format_version"})
        if unknown:
            raise UserError(f"{path}: unknown key {unknown[0]!r} (written by a newer gptcli?)")
    return data


def model_config_from_json(path: Path) -> ModelConfig:
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    data = read_versioned_json(path, known=fields | {"task", "lora", "gptcli_version"})
    missing = sorted(fields - set(data))
    if missing:
        console.warn(f"{path}: keys missing ({', '.join(missing)}), using their defaults")
    hints = typing.get_type_hints(ModelConfig)
    kwargs = {}
    for name in fields & set(data):
        value = data[name]
        if hints[name] is float and isinstance(value, int):
            value = float(value)
        kwargs[name] = value
    return ModelConfig(**kwargs)


def read_state(ckpt: Path) -> dict:
    return read_versioned_json(ckpt / "state.json", known=STATE_KEYS)


def config_json(cfg: ModelConfig, info: dict | None = None) -> dict:
    """config.json: the model config plus what it was trained for (info: task, lora)."""
    return {
        "format_version": FORMAT_VERSION,
        **dataclasses.asdict(cfg),
        "task": "lm",
        **(info or {}),
    }


def read_info(ckpt: Path) -> dict:
    """The task (and LoRA base) a checkpoint records; {"task": {"kind": "lm"}} for plain ones."""
    if not (ckpt / "config.json").is_file():
        return {"task": {"kind": "lm"}}
    data = read_versioned_json(ckpt / "config.json")
    task = data.get("task", "lm")
    info = {"task": task if isinstance(task, dict) else {"kind": task}}
    if "lora" in data:
        info["lora"] = data["lora"]
    return info


def tensor_shapes(path: Path) -> dict[str, tuple[list[int], str]]:
    """Names, shapes and dtypes of a safetensors file, from its header alone (numpy's view of
    the file reads the same header as torch's, without importing torch)."""
    try:
        with safe_open(str(path), framework="numpy") as f:
            out = {}
            for name in f.keys():
                s = f.get_slice(name)
                out[name] = (list(s.get_shape()), s.get_dtype())
            return out
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path}: unreadable safetensors file ({e})") from None
