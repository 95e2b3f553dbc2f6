"""Finding and describing gptcli's own checkpoints, without torch.

A checkpoint is a folder checkpoints/step-NNNNNNN/ holding model.safetensors, config.json,
tokenizer.json and state.json; checkpoint_tensors writes it under a temporary name and renames
it into place when complete, so a folder here is either whole or absent. What this module
reads (paths, the JSON metadata and its format version, tensor names and shapes) needs no
torch, so finding checkpoints stays fast: an up-to-date `gptcli tokenize` never loads it.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from gptcli import console
from gptcli.console import UserError
from gptcli.files import naming_file, read_json, typed_fields
from gptcli.recipe import LoraConfig, ModelConfig, TaskConfig, need

# config.json and the optimizer index keep version 1; state.json has its own version, so
# a state key added later never makes a reader refuse an unchanged config.json.
CONFIG_VERSION = 1
STATE_VERSION = 2  # 2: global_batch and auto (version 1 files exist with and without them)
CKPT_PREFIX = "step-"
REQUIRED_FILES = ("model.safetensors", "config.json", "tokenizer.json", "state.json")
MODEL_KEYS = {f.name for f in dataclasses.fields(ModelConfig)}
# Without these the weights' shapes are unknown: a config.json lacking one is refused.
SHAPE_KEYS = ("n_layer", "n_head", "n_embd", "vocab_size", "block_size")
# state.json's keys and their types (JSON's: the trainer's numbers, and mappings of them)
STATE_TYPES: dict[str, Any] = {
    "step": int,
    "tokens_seen": int,
    "elapsed_s": float,
    "data_position": int,
    "metrics": dict,
    "train": dict,
    "versions": dict,
    "optimizer_param_groups": list,
    "global_batch": int,
    "auto": dict,  # what dtype: auto and compile: auto decided, and on which device type
    "source": str,  # "hf": a checkpoint exported from a transformers folder
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


def read_versioned_json(
    path: Path, known: set[str] | None = None, newest: int = CONFIG_VERSION
) -> dict:
    """Read config/index JSON: refuse a newer format or unknown keys, exit-2 style."""
    return read_json(path, newest, known)


def is_hf_config(data: dict) -> bool:
    """A transformers config.json (model_type, no format_version), not one gptcli wrote."""
    return "model_type" in data and "format_version" not in data


def read_config(path: Path) -> tuple[ModelConfig, dict]:
    """A checkpoint's config.json, every key checked with the recipe's own types and checks:
    the model config and what it was trained for ({"task": {...}}, plus "lora" for adapters).
    A missing key takes its default with a warning, except the shape keys without which the
    weights cannot be read."""
    data = read_versioned_json(path, known=MODEL_KEYS | {"task", "lora", "gptcli_version"})
    missing = [k for k in SHAPE_KEYS if k not in data]
    if missing:
        raise UserError(
            f"{path}: missing key '{missing[0]}' (the weights cannot be read without the "
            f"model's shape: {', '.join(SHAPE_KEYS)})"
        )
    missing = sorted(MODEL_KEYS - set(data))
    if missing:
        console.warn(f"{path}: keys missing ({', '.join(missing)}), using their defaults")
    kwargs = typed_fields(path, data, typing.get_type_hints(ModelConfig), "model.")
    typed_fields(path, data, {"gptcli_version": str})
    with naming_file(path, "model."):
        cfg = ModelConfig(**kwargs)
        cfg.check()
        need("model.vocab_size", cfg.vocab_size, cfg.vocab_size > 0, "a positive integer")
    return cfg, {"task": task_info(path, data.get("task", "lm")), **lora_info(path, data)}


def task_info(path: Path, task: object) -> dict:
    """config.json's task: a kind ("lm") or a mapping of the task's keys (an SFT one also
    names its chat template)."""
    hints = {**typing.get_type_hints(TaskConfig), "template": str}
    entry = task if isinstance(task, dict) else {"kind": task}
    unknown = sorted(set(entry) - set(hints))
    if unknown:
        raise UserError(f"{path}: unknown key 'task.{unknown[0]}' (written by a newer gptcli?)")
    with naming_file(path):
        typed = typed_fields(path, entry, hints, "task.", strip="")
        need("task.kind", entry.get("kind"), "kind" in entry, "one of 'lm', 'sft', 'classify'")
        known = {k: v for k, v in typed.items() if k != "template"}
        TaskConfig(**known).check()
    return typed


def lora_info(path: Path, data: dict) -> dict:
    """config.json's lora entry ({} when none): the adapters' settings and their base."""
    if "lora" not in data:
        return {}
    lora = data["lora"]
    hints = {**typing.get_type_hints(LoraConfig), "base": dict, "base_vocab": int}
    with naming_file(path):
        need("lora", lora, isinstance(lora, dict), "a mapping (JSON object)")
        ok = set(lora) == set(hints)
        need("lora", lora, ok, f"a mapping with keys {', '.join(sorted(hints))}")
        typed = typed_fields(path, lora, hints, "lora.", strip="")
        LoraConfig(**{k: typed[k] for k in typing.get_type_hints(LoraConfig)}).check()
        need("lora.rank", typed["rank"], typed["rank"] > 0, "a positive integer")
        base = typed["base"]
        ok = all(isinstance(base.get(k), str) for k in ("path", "sha256"))
        need("lora.base", base, ok, "a mapping of path and sha256 (strings)")
        need("lora.base_vocab", typed["base_vocab"], typed["base_vocab"] > 0, "a positive integer")
    return {"lora": typed}


def model_config_from_json(path: Path) -> ModelConfig:
    """The model config of a checkpoint's config.json, checked as read_config does."""
    return read_config(path)[0]


def read_info(ckpt: Path) -> dict:
    """The task (and LoRA base) a checkpoint records; {"task": {"kind": "lm"}} for plain ones
    and for HF folders."""
    path = ckpt / "config.json"
    if not path.is_file() or is_hf_config(read_json(path)):
        return {"task": {"kind": "lm"}}
    return read_config(path)[1]


def read_state(ckpt: Path) -> dict:
    """state.json, each key it has checked by type. Version 1 files exist with and without
    global_batch and auto (added later): both read, and without them a resume keeps the
    pre-version-2 behaviour. The records (metrics, versions, train, ...) are absent from a
    checkpoint exported from another format and stay so; a missing step is the folder's."""
    path = ckpt / "state.json"
    data = read_versioned_json(path, known=set(STATE_TYPES), newest=STATE_VERSION)
    state = {**data, **typed_fields(path, data, STATE_TYPES)}
    with naming_file(path):
        for key in ("step", "tokens_seen", "data_position", "elapsed_s"):
            value = state.get(key, 0)
            need(key, value, value >= 0 and math.isfinite(value), "a number >= 0")
        batch = state.get("global_batch", 1)
        need("global_batch", batch, batch > 0, "a positive integer")
    if "step" not in state and ckpt.name.removeprefix(CKPT_PREFIX).isdigit():
        state["step"] = step_of(ckpt)
        console.warn(f"{path}: key 'step' missing, using {state['step']} (the folder's step)")
    return state


def config_json(cfg: ModelConfig, info: dict | None = None) -> dict:
    """config.json: the model config plus what it was trained for (info: task, lora)."""
    return {
        "format_version": CONFIG_VERSION,
        **dataclasses.asdict(cfg),
        "task": "lm",
        **(info or {}),
    }


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
