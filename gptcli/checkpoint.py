"""Every read and write of checkpoints and run-folder state, all of it atomic.

A checkpoint is a folder checkpoints/step-NNNNNNN/ that is written under a temporary name and
renamed into place when complete, so a crash (even kill -9) leaves either the whole checkpoint
or none of it. Weights and optimizer state are safetensors; nothing is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import shutil
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError, safe_open

from gptcli import __version__, console, tokenizer
from gptcli.console import Failure, Interrupted, UserError
from gptcli.recipe import ModelConfig

if TYPE_CHECKING:  # torch is imported where tensors are touched: finding checkpoints and
    import torch  # taking the run lock stay fast (an up-to-date `tokenize` needs no torch)

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
}


# --------------------------------------------------------------------------- finding checkpoints


def is_checkpoint(path: Path) -> bool:
    return path.is_dir() and all((path / f).is_file() for f in REQUIRED_FILES)


def step_of(path: Path) -> int:
    return int(path.name.removeprefix(CKPT_PREFIX))


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


def resolve(path: str | Path | None) -> Path:
    """A checkpoint folder, a run folder (its newest checkpoint) or None (newest under ./runs)."""
    if path is None:
        found = newest_under(Path("runs"))
        if found is None:
            raise UserError(
                "no complete checkpoint under ./runs (train one with `gptcli pretrain RECIPE` "
                "or pass --checkpoint PATH)"
            )
        return found
    p = Path(path)
    if not p.exists():
        raise UserError(f"checkpoint not found: {p}")
    from gptcli import export

    if export.is_hf_folder(p):
        return p  # a transformers folder, converted on load
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


# --------------------------------------------------------------------------- loading


@dataclass
class Loaded:
    path: Path
    config: ModelConfig
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]
    info: dict[str, Any] = dataclasses.field(default_factory=lambda: {"task": {"kind": "lm"}})


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable safetensors file ({e})") from None


def load(path: str | Path | None, merge_lora: bool = True) -> Loaded:
    """Read a checkpoint's weights (safetensors only), config and state.

    A local HF GPT-2/Llama folder is accepted too and converted here, so every reader
    (sample, finetune's init, inspect --score, export) takes one. A LoRA checkpoint is
    combined with its base (checked by sha256); merge_lora=False keeps the adapters apart,
    as resuming its training needs.
    """
    ckpt = resolve(path)
    from gptcli import export

    if export.is_hf_folder(ckpt):
        return export.load_hf(ckpt)
    cfg = model_config_from_json(ckpt / "config.json")
    weights = _load_file(ckpt / "model.safetensors")
    info = read_info(ckpt)
    if "lora" in info:
        weights = _with_base(ckpt, info["lora"], weights, merge_lora)
    state = read_state(ckpt)
    return Loaded(ckpt, cfg, weights, state, info)


def _with_base(ckpt: Path, lora_info: dict, adapters: dict, merge: bool) -> dict:
    """A LoRA checkpoint's full weights: its base's, grown by the added token rows, plus the
    adapters (folded in when merge)."""
    import torch

    from gptcli import lora
    from gptcli.data import file_sha256

    base_ref = lora_info["base"]
    base = Path(base_ref["path"])
    if not (base / "model.safetensors").is_file():
        raise UserError(
            f"{ckpt}: its LoRA base checkpoint {base} is missing; restore it, or load a "
            "checkpoint exported with `gptcli export --format gptcli` (merged weights)"
        )
    if file_sha256(base / "model.safetensors") != base_ref["sha256"]:
        raise UserError(
            f"{ckpt}: the weights of its LoRA base {base} changed since the adapters were trained"
        )
    weights = dict(load(base).weights)
    for name in ("wte.weight", "lm_head.weight"):
        extra = adapters.get(f"{name}.extra_rows")
        if extra is not None and name in weights:
            kept = weights[name][: lora_info["base_vocab"]]
            weights[name] = torch.cat([kept, extra.to(kept.dtype)])
    weights.update({k: v for k, v in adapters.items() if not k.endswith(".extra_rows")})
    if merge:
        weights = lora.merge(weights, lora_info["alpha"] / lora_info["rank"])
    return weights


def build_model(loaded: Loaded, device: str | torch.device = "cpu"):
    """The model a checkpoint describes, with its weights; ties lm_head when the config says so."""
    from gptcli.model import GPT

    model = GPT(loaded.config)
    missing, unexpected = model.load_state_dict(loaded.weights, strict=False)
    allowed_missing = {"lm_head.weight"} if loaded.config.tie_embeddings else set()
    bad = (set(missing) - allowed_missing) | set(unexpected)
    if bad:
        raise UserError(
            f"{loaded.path / 'model.safetensors'}: weights do not match config.json "
            f"(e.g. {sorted(bad)[0]!r})"
        )
    return model.to(device)


def tensor_shapes(path: Path) -> dict[str, tuple[list[int], str]]:
    """Names, shapes and dtypes of a safetensors file without reading the tensors."""
    try:
        with safe_open(str(path), framework="pt") as f:
            out = {}
            for name in f.keys():
                s = f.get_slice(name)
                out[name] = (list(s.get_shape()), s.get_dtype())
            return out
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path}: unreadable safetensors file ({e})") from None


# --------------------------------------------------------------------------- saving


def _weights_for_save(model: torch.nn.Module, info: dict | None) -> dict[str, torch.Tensor]:
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if getattr(model, "cfg", None) is not None and model.cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)  # tied to wte.weight: stored once
    if info and "lora" in info:  # adapters, task head and added token rows; the rest is the base
        from gptcli import lora

        base_vocab = info["lora"]["base_vocab"]
        kept = {k: v for k, v in sd.items() if lora.is_adapter_key(k) or k.startswith("cls_head.")}
        for name in ("wte.weight", "lm_head.weight"):
            if name in sd and sd[name].shape[0] > base_vocab:
                kept[f"{name}.extra_rows"] = sd[name][base_vocab:].contiguous()
        sd = kept
    return sd


def optimizer_tensors(
    optimizers: list[torch.optim.Optimizer],
) -> tuple[dict[str, torch.Tensor], list[list[dict]]]:
    """Flatten optimizer states into named tensors plus JSON-able param groups (no pickle)."""
    import torch

    tensors, groups = {}, []
    for k, opt in enumerate(optimizers):
        sd = opt.state_dict()
        for idx, per_param in sd["state"].items():
            for key, value in per_param.items():
                t = value if torch.is_tensor(value) else torch.tensor(value)
                tensors[f"optim{k}.{idx}.{key}"] = t.detach().cpu().contiguous()
        groups.append(sd["param_groups"])
    return tensors, groups


def restore_optimizers(
    optimizers: list[torch.optim.Optimizer], tensors: dict, groups: list[list[dict]]
) -> None:
    if len(groups) != len(optimizers):
        raise UserError(
            "the checkpoint's optimizer state does not match train.optimizer (use --fresh)"
        )
    for k, opt in enumerate(optimizers):
        state: dict[int, dict] = {}
        for name, value in tensors.items():
            if name.startswith(f"optim{k}."):
                _, idx, key = name.split(".", 2)
                state.setdefault(int(idx), {})[key] = value
        # The optimizers were built from the recipe as it is now: its settings (lr, betas,
        # weight decay) win over the saved ones, so a changed setting applies from here on.
        current = [{key: v for key, v in g.items() if key != "params"} for g in opt.param_groups]
        opt.load_state_dict({"state": state, "param_groups": groups[k]})
        for group, settings in zip(opt.param_groups, current, strict=True):
            group.update(settings)


def rng_tensors() -> dict[str, torch.Tensor]:
    import torch

    out = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = s
    return out


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    import torch

    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(
    run_dir: Path,
    step: int,
    model: torch.nn.Module,
    optimizers: list[torch.optim.Optimizer] | None,
    state: dict[str, Any],
    tokenizer_path: Path,
    info: dict | None = None,
) -> Path:
    """Write checkpoints/step-NNNNNNN atomically; an existing one is never touched.

    info (config.json's task and lora entries) says what the model was trained for."""
    from safetensors.torch import save_file

    folder = run_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{CKPT_PREFIX}{step:07d}"
    if final.exists():
        return final  # same step, same state: never overwrite a checkpoint in place
    tmp = folder / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        meta = {"format": "pt", "gptcli_version": __version__, "step": str(step)}
        save_file(_weights_for_save(model, info), str(tmp / "model.safetensors"), metadata=meta)
        (tmp / "config.json").write_text(json.dumps(config_json(model.cfg, info), indent=2))
        shutil.copyfile(tokenizer_path, tmp / tokenizer.TOKENIZER_FILE)
        trainer_tensors = rng_tensors()
        state = {"format_version": FORMAT_VERSION, **state, "step": step}
        if optimizers:
            opt_tensors, groups = optimizer_tensors(optimizers)
            trainer_tensors.update(opt_tensors)
            state["optimizer_param_groups"] = groups
        save_file(trainer_tensors, str(tmp / "trainer.safetensors"))
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        tmp.rename(final)
        _fsync_dir(folder)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if _is_disk_full(e):
            previous = newest_in_run(run_dir)
            kept = f"{previous} is intact" if previous else "no earlier checkpoint exists"
            raise Failure(
                f"disk full while saving {final.name}; {kept}; free space and resume"
            ) from None
        raise
    return final


def _is_disk_full(e: BaseException) -> bool:
    """ENOSPC from Python's I/O, or as safetensors' Rust writer reports it (os error 28)."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(e, SafetensorError) and "os error 28" in str(e)


def prune(run_dir: Path, keep_last: int) -> None:
    """Delete all but the newest keep_last checkpoints (called after a save has completed)."""
    for old in run_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def clean_stale_temps(run_dir: Path) -> None:
    """Remove temp folders that a killed save left behind (they are never read)."""
    for tmp in (run_dir / "checkpoints").glob(".tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def load_trainer_tensors(ckpt: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = ckpt / "trainer.safetensors"
    if not path.is_file():
        return {}
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path}: unreadable safetensors file ({e})") from None


# --------------------------------------------------------------------------- the run lock


class RunLock:
    """An exclusive flock on runs/<name>/.lock: released by the kernel even after kill -9.

    When the command is interrupted, the temp files it left go, and so does a folder it
    created that holds nothing of value yet (see discard_unfinished)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / ".lock"
        self.fd: int | None = None
        self.created = False

    def __enter__(self) -> RunLock:
        run_dir = self.path.parent
        self.created = not run_dir.exists()
        with console.writing(run_dir):
            run_dir.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise UserError(
                f"{self.path.parent} is in use by another gptcli process "
                "(wait for it, or use --fresh for a new run folder)"
            ) from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, str(os.getpid()).encode())
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if self.fd is not None:
            if isinstance(exc, (KeyboardInterrupt, Interrupted)):
                discard_unfinished(self.path.parent, self.created)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _is_temp(path: Path) -> bool:
    """Files written under a temp name and renamed when complete (.NAME.tmp, .NAME.PID.tmp,
    checkpoints/.tmp-step-...)."""
    name = path.name
    return name.startswith(".tmp-") or (name.startswith(".") and name.endswith((".tmp", ".part")))


def discard_unfinished(run_dir: Path, created: bool) -> None:
    """After an interruption: remove the temp files in run_dir, and the whole folder when this
    command created it and it holds nothing of value (the lock, empty folders, a copy of stdin,
    a tokenizer that no shards were made with)."""
    for folder in (run_dir, run_dir / "data", run_dir / "checkpoints"):
        for path in folder.glob(".*") if folder.is_dir() else []:
            if _is_temp(path) and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif _is_temp(path):
                path.unlink(missing_ok=True)
    if not created:
        return
    disposable = {Path(".lock"), Path("data") / "stdin.txt"}
    if not (run_dir / "data" / "manifest.json").is_file():
        disposable.add(Path(tokenizer.TOKENIZER_FILE))
    files = {p.relative_to(run_dir) for p in run_dir.rglob("*") if not p.is_dir()}
    if files <= disposable:
        shutil.rmtree(run_dir, ignore_errors=True)
