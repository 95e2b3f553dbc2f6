"""The tensors of gptcli's checkpoints: reading weights into models, and every save, atomic.

A save writes checkpoints/step-NNNNNNN/ under a temporary name and renames it into place when
complete, so a crash (even kill -9) leaves either the whole checkpoint or none of it. Weights
and optimizer state are safetensors; nothing is ever unpickled. Finding checkpoints and reading
their JSON needs no torch and lives in `checkpoint`; this module is its tensor half: weights,
models, LoRA composition, optimizer and RNG state, and whole or sharded (FSDP) saves.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from gptcli import __version__, console, lora, tokenizer
from gptcli.checkpoint import (
    CONFIG_VERSION,
    STATE_VERSION,
    checkpoint_folder,
    config_json,
    newest_in_run,
    read_config,
    read_state,
    read_versioned_json,
    resolve,
    run_checkpoints,
    tensor_shapes,
    weights_file,
)
from gptcli.console import Failure, UserError
from gptcli.files import fsync_dir, naming_file, sha256_file, umask_mode, write_folder
from gptcli.model import GPT
from gptcli.recipe import ModelConfig, need

OPTIM_INDEX = "optim-index.json"


# --------------------------------------------------------------------------- loading


@dataclass
class Loaded:
    """A model as read from disk: where from, its config, weights, state.json and info."""

    path: Path
    config: ModelConfig
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]
    info: dict[str, Any] = dataclasses.field(default_factory=lambda: {"task": {"kind": "lm"}})


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors in the file's order, as load_file reads them, but one by one
    with SIGINT and SIGTERM held in between (console.held_signals): a signal stops the read at
    the next tensor instead of surfacing as a corrupt-file error."""
    with console.held_signals() as check, safe_open(str(path), framework="pt") as f:
        names = f.offset_keys() if hasattr(f, "offset_keys") else f.keys()
        tensors = {}
        for name in names:
            tensors[name] = f.get_tensor(name)
            check()
    return tensors


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; an unreadable file is bad input named by its path."""
    try:
        return read_safetensors(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable safetensors file ({e})") from None


def load(path: str | Path) -> Loaded:
    """Read a gptcli checkpoint's weights (safetensors only), config and state, as stored: a
    LoRA checkpoint holds its adapters alone (load_full combines it with its base)."""
    ckpt = resolve(path)
    cfg, info = read_config(ckpt / "config.json")
    state = read_state(ckpt)
    weights = read_weights(ckpt / "model.safetensors")
    return Loaded(ckpt, cfg, weights, state, info)


def lora_base(ckpt: Path, lora_info: dict) -> Path:
    """The base checkpoint a LoRA checkpoint was trained on, checked to be unchanged."""
    base_ref = lora_info["base"]
    base = Path(base_ref["path"])
    weights = base / "model.safetensors"
    if not weights.is_file():
        raise UserError(
            f"{ckpt}: its LoRA base checkpoint {base} is missing; restore it, or load a "
            "checkpoint exported with `gptcli export --format gptcli` (merged weights)"
        )
    if sha256_file(weights) != base_ref["sha256"]:
        raise UserError(
            f"{ckpt}: the weights of its LoRA base {base} changed since the adapters were trained"
        )
    return base


def with_base(
    lora_info: dict, adapters: dict, base_weights: dict, merge: bool
) -> dict[str, torch.Tensor]:
    """A LoRA checkpoint's full weights: its base's, grown by the added token rows, plus the
    adapters (folded in when merge; kept apart to resume their training)."""
    weights = dict(base_weights)
    for name in ("wte.weight", "lm_head.weight"):
        extra = adapters.get(f"{name}.extra_rows")
        if extra is not None and name in weights:
            kept = weights[name][: lora_info["base_vocab"]]
            weights[name] = torch.cat([kept, extra.to(kept.dtype)])
    weights.update({k: v for k, v in adapters.items() if not k.endswith(".extra_rows")})
    if merge:
        weights = lora.merge(weights, lora_info["alpha"] / lora_info["rank"])
    return weights


def load_full(
    path: str | Path,
    merge_lora: bool = True,
    read_base: Callable[[Path], Loaded] | None = None,
) -> Loaded:
    """A gptcli checkpoint with full weights: a LoRA checkpoint is combined with its base
    (checked by sha256), read by read_base, or as a gptcli checkpoint when None (a base
    that is an HF folder needs `load.load`). merge_lora=False keeps the adapters apart, as
    resuming their training needs."""
    loaded = load(path)
    lora_info = loaded.info.get("lora")
    if lora_info is not None:
        base = (read_base or load_full)(lora_base(loaded.path, lora_info))
        loaded.weights = with_base(lora_info, loaded.weights, base.weights, merge_lora)
    return loaded


def check_shapes(
    expected: dict[str, Any], found: dict[str, torch.Tensor], where: Path, source: str
) -> None:
    """A config whose shapes disagree with the weights is bad input (an edited config.json),
    named by its first mismatching tensor, rather than a state-dict dump."""
    for name, want in expected.items():  # the model's order: the embedding first
        tensor = found.get(name)
        if tensor is not None and tuple(want.shape) != tuple(tensor.shape):
            raise UserError(
                f"{where}: tensor {name!r} has shape {list(tensor.shape)} in the file but "
                f"{source} implies {list(want.shape)}; restore the {source} these weights "
                "were saved with"
            )


def load_weights(
    model: torch.nn.Module,
    weights: dict[str, torch.Tensor],
    where: Path,
    may_lack: Iterable[str] = (),
) -> None:
    """Load weights into model after checking names and shapes against its config (the one way
    weights enter a model); may_lack names tensors the model keeps as initialised or tied."""
    allowed = set(may_lack)
    cfg = getattr(model, "cfg", None)
    if cfg is not None and cfg.tie_embeddings:
        allowed.add("lm_head.weight")
    expected = model.state_dict()
    check_shapes(expected, weights, where, "config.json")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    bad = sorted((set(missing) - allowed) | set(unexpected))
    if bad:
        which = "lacks" if bad[0] in missing else "has an unexpected"
        raise UserError(
            f"{where}: weights do not match config.json (the file {which} tensor {bad[0]!r})"
        )


def build_model(loaded: Loaded, device: str | torch.device = "cpu") -> GPT:
    """The model a checkpoint describes, with its weights; ties lm_head when the config says so."""
    model = GPT(loaded.config)
    load_weights(model, loaded.weights, weights_file(loaded.path))
    return model.to(device)


def untied_weights(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict with lm_head present (tied checkpoints store it once, as wte)."""
    w = dict(weights)
    if "lm_head.weight" not in w:
        w["lm_head.weight"] = w["wte.weight"]
    return w


def load_trainer_tensors(ckpt: Path) -> dict[str, torch.Tensor]:
    path = ckpt / "trainer.safetensors"
    if not path.is_file():
        return {}
    try:
        return read_safetensors(path)
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path}: unreadable safetensors file ({e})") from None


# --------------------------------------------------------------------------- optimizer and RNG


def optimizer_tensors(
    optimizers: list[torch.optim.Optimizer],
) -> tuple[dict[str, torch.Tensor], list[list[dict]]]:
    """Flatten optimizer states into named tensors plus JSON-able param groups (no pickle)."""
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
    optimizers: list[torch.optim.Optimizer], saved: OptimizerState, groups: list[list[dict]]
) -> None:
    """Load the saved state into optimizers, each rank taking the rows of its own shards:
    the state resharded to however many ranks train now."""
    if len(groups) != len(optimizers):
        raise UserError(
            "the checkpoint's optimizer state does not match train.optimizer (use --fresh)"
        )
    for k, opt in enumerate(optimizers):
        params = [p for group in opt.param_groups for p in group["params"]]
        state: dict[int, dict] = {}
        for name in saved.names():
            if name.startswith(f"optim{k}."):
                _, idx, key = name.split(".", 2)
                if int(idx) >= len(params):
                    raise UserError(
                        f"{saved.ckpt}: its optimizer state does not match the model (use --fresh)"
                    )
                state.setdefault(int(idx), {})[key] = like_param(saved, name, params[int(idx)])
        # The optimizers were built from the recipe as it is now: its settings (lr, betas,
        # weight decay) win over the saved ones, so a changed setting applies from here on.
        current = [{key: v for key, v in g.items() if key != "params"} for g in opt.param_groups]
        opt.load_state_dict({"state": state, "param_groups": groups[k]})
        for group, settings in zip(opt.param_groups, current, strict=True):
            group.update(settings)


def like_param(saved: OptimizerState, name: str, param: torch.Tensor) -> torch.Tensor:
    """A saved state tensor as this rank holds it: whole, or, for a parameter sharded on dim 0
    (FSDP), this rank's rows as a DTensor shaped like the parameter."""
    # DTensor's import costs seconds, which sampling and evaluation (no shards) never pay
    from torch.distributed.tensor import DTensor

    shape = saved.shape(name)
    if shape != list(param.shape) or not isinstance(param, DTensor):
        return saved.read(name)
    mesh = param.device_mesh
    start, stop = shard_rows(shape[0], mesh.size(), mesh.get_local_rank())
    local = saved.read(name, start, stop).to(param.device)
    if local.shape != param.to_local().shape:
        raise Failure(f"{saved.ckpt}: {name} has {local.shape[0]} rows for this rank's shard")
    return DTensor.from_local(
        local, mesh, param.placements, run_check=False, shape=param.shape, stride=param.stride()
    )


def rng_tensors() -> dict[str, torch.Tensor]:
    out = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = s
    return out


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def shard_rows(rows: int, world: int, rank: int) -> tuple[int, int]:
    """The rows [start, stop) of dim 0 that rank holds when sharded over world ranks, as
    torch.chunk splits them (FSDP2's Shard(0)): the last ranks may hold fewer, or none."""
    size = -(-rows // world)
    start = min(rank * size, rows)
    return start, min(start + size, rows)


def is_index_entry(entry: object) -> bool:
    """One tensor of optim-index.json: its whole shape and whether it is sharded."""
    if not isinstance(entry, dict) or set(entry) != {"shape", "sharded"}:
        return False
    shape = entry["shape"]
    dims_ok = isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)
    return dims_ok and isinstance(entry["sharded"], bool)


def shard_file(rank: int, world: int) -> str:
    return f"optim-{rank:05d}-of-{world:05d}.safetensors"


class OptimizerState:
    """A checkpoint's optimizer tensors, read a range of dim-0 rows at a time, whether rank
    0 saved them whole (trainer.safetensors) or each rank its shard (optim-*.safetensors)."""

    def __init__(self, ckpt: Path) -> None:
        self.ckpt = ckpt
        index_path = ckpt / OPTIM_INDEX
        if index_path.is_file():
            index = read_versioned_json(index_path, known={"world", "tensors"})
            with naming_file(index_path):
                world, entries = index.get("world"), index.get("tensors")
                need("world", world, type(world) is int and world > 0, "a positive integer")
                ok = isinstance(entries, dict) and all(map(is_index_entry, entries.values()))
                need("tensors", "...", ok, "a mapping of names to {shape, sharded}")
            self.world, self.entries = world, entries
            self.files = [ckpt / shard_file(r, self.world) for r in range(self.world)]
        else:
            self.world = 1
            self.files = [ckpt / "trainer.safetensors"]
            shapes = tensor_shapes(self.files[0]) if self.files[0].is_file() else {}
            self.entries = {
                name: {"shape": shape, "sharded": False}
                for name, (shape, _) in shapes.items()
                if name.startswith("optim")
            }

    def names(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> list[int]:
        return self.entries[name]["shape"]

    def read(self, name: str, start: int | None = None, stop: int | None = None) -> torch.Tensor:
        """Rows [start, stop) of the whole tensor (all of it when start is None); a signal
        stops the reading after it (console.held_signals says why)."""
        with console.held_signals():
            try:
                if not self.entries[name]["sharded"]:
                    with safe_open(str(self.files[0]), framework="pt") as f:
                        whole = f.get_tensor(name)
                    return whole if start is None else whole[start:stop]
                rows = self.shape(name)[0]
                start, stop = (0, rows) if start is None else (start, stop)
                parts = []
                for rank, path in enumerate(self.files):
                    lo, hi = shard_rows(rows, self.world, rank)
                    a, b = max(lo, start), min(hi, stop)
                    if a < b:
                        with safe_open(str(path), framework="pt") as f:
                            parts.append(f.get_slice(name)[a - lo : b - lo])
                if not parts:
                    return torch.empty([0, *self.shape(name)[1:]])
                return torch.cat(parts)
            except (SafetensorError, OSError) as e:
                raise UserError(f"{self.ckpt}: unreadable optimizer state ({e})") from None


# --------------------------------------------------------------------------- saving


@dataclass
class Snapshot:
    """What one checkpoint holds: the training state at a step, as the trainer has it."""

    step: int
    config: ModelConfig
    # the model's whole state dict (None on the ranks of a sharded save other than 0)
    weights: dict[str, torch.Tensor] | None
    tokenizer_path: Path
    optimizers: list[torch.optim.Optimizer] = dataclasses.field(default_factory=list)
    state: dict[str, Any] = dataclasses.field(default_factory=dict)  # state.json's entries
    info: dict | None = None  # config.json's task and lora entries: what the model is for


@dataclass(frozen=True)
class Sharding:
    """A save every rank takes part in, each writing its own optimizer shard (FSDP)."""

    rank: int
    world: int
    device: torch.device  # where the collectives' tensors live (the GPU under NCCL)


def save(run_dir: Path, snapshot: Snapshot, sharding: Sharding | None = None) -> Path:
    """Write checkpoints/step-NNNNNNN atomically; an existing one is never touched.

    Whole (sharding None): the one rank that saves writes everything. Sharded: every rank
    calls it and writes its optimizer shard; rank 0 the weights and the rest."""
    if sharding is not None:
        return save_sharded(run_dir, snapshot, sharding)
    final = checkpoint_folder(run_dir, snapshot.step)
    if final.exists():
        return final  # same step, same state: never overwrite a checkpoint in place
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        trainer_tensors = rng_tensors()
        state = {**snapshot.state}
        if snapshot.optimizers:
            opt_tensors, groups = optimizer_tensors(snapshot.optimizers)
            trainer_tensors.update(opt_tensors)
            state["optimizer_param_groups"] = groups
        write_main_files(tmp, snapshot, trainer_tensors, state)
        publish(tmp, final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise_disk_full(e, run_dir, final)
        raise
    return final


def save_safetensors(
    tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
) -> None:
    """Every .safetensors gptcli writes: readable under the user's umask like any other file."""
    save_file(tensors, str(path), metadata=metadata)
    umask_mode(path)


def weights_for_save(
    cfg: ModelConfig, weights: dict[str, torch.Tensor], info: dict | None
) -> dict[str, torch.Tensor]:
    """The tensors model.safetensors stores, from the model's whole state dict: tied weights
    once; for LoRA only what trained."""
    sd = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    if cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)  # tied to wte.weight: stored once
    if info and "lora" in info:  # adapters, task head and added token rows; the rest is the base
        base_vocab = info["lora"]["base_vocab"]
        kept = {k: v for k, v in sd.items() if lora.is_adapter_key(k) or k.startswith("cls_head.")}
        for name in ("wte.weight", "lm_head.weight"):
            if name in sd and sd[name].shape[0] > base_vocab:
                kept[f"{name}.extra_rows"] = sd[name][base_vocab:].contiguous()
        sd = kept
    return sd


def write_main_files(
    tmp: Path,
    snapshot: Snapshot,
    trainer_tensors: dict[str, torch.Tensor],
    state: dict[str, Any],
) -> None:
    """What every checkpoint holds: whole weights, config, tokenizer, RNG and state."""
    step, cfg, info = snapshot.step, snapshot.config, snapshot.info
    meta = {"format": "pt", "gptcli_version": __version__, "step": str(step)}
    weights = weights_for_save(cfg, snapshot.weights, info)
    save_safetensors(weights, tmp / "model.safetensors", meta)
    (tmp / "config.json").write_text(json.dumps(config_json(cfg, info), indent=2))
    shutil.copyfile(snapshot.tokenizer_path, tmp / tokenizer.TOKENIZER_FILE)
    save_safetensors(trainer_tensors, tmp / "trainer.safetensors")
    state = {"format_version": STATE_VERSION, **state, "step": step}
    (tmp / "state.json").write_text(json.dumps(state, indent=2))


def publish(tmp: Path, final: Path) -> None:
    """Make the complete temp folder durable, then rename it into place in one step."""
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    tmp.rename(final)
    fsync_dir(final.parent)


def raise_disk_full(e: BaseException, run_dir: Path, final: Path) -> None:
    if _is_disk_full(e):
        previous = newest_in_run(run_dir)
        kept = f"{previous} is intact" if previous else "no earlier checkpoint exists"
        raise Failure(
            f"disk full while saving {final.name}; {kept}; free space and resume"
        ) from None


def _is_disk_full(e: BaseException) -> bool:
    """ENOSPC from Python's I/O, or as safetensors' Rust writer reports it (os error 28)."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(e, SafetensorError) and "os error 28" in str(e)


def local_optimizer_tensors(
    optimizers: list[torch.optim.Optimizer],
) -> tuple[dict[str, torch.Tensor], dict[str, dict], list[list[dict]]]:
    """This rank's shard of every optimizer state tensor, and the index entry of each (its
    whole shape; sharded says whether it is split over the ranks on dim 0)."""
    from torch.distributed.tensor import DTensor  # seconds to import: sharded saves only

    tensors, entries, groups = {}, {}, []
    for k, opt in enumerate(optimizers):
        sd = opt.state_dict()
        for idx, per_param in sd["state"].items():
            for key, value in per_param.items():
                name = f"optim{k}.{idx}.{key}"
                sharded = isinstance(value, DTensor)
                local = value.to_local() if sharded else value
                tensors[name] = local.detach().cpu().contiguous()
                entries[name] = {"shape": list(value.shape), "sharded": sharded}
        groups.append(sd["param_groups"])
    return tensors, entries, groups


def save_sharded(run_dir: Path, snapshot: Snapshot, sharding: Sharding) -> Path:
    """Each rank writes its optimizer shard into one temp folder, rank 0 the whole weights
    (snapshot.weights: given on rank 0 only) and the rest; rank 0 renames it into place once
    every rank has written, so the folder is complete or absent."""
    rank, world, device = sharding.rank, sharding.world, sharding.device
    final = checkpoint_folder(run_dir, snapshot.step)
    if final.exists():
        return final
    token = torch.tensor([os.getpid() if rank == 0 else 0], dtype=torch.int64, device=device)
    tdist.all_reduce(token, op=tdist.ReduceOp.MAX)  # one temp folder for all ranks
    tmp = final.parent / f".tmp-{final.name}-{int(token.item())}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    tdist.barrier()
    error: BaseException | None = None
    try:
        tensors, entries, groups = local_optimizer_tensors(snapshot.optimizers)
        save_safetensors(tensors, tmp / shard_file(rank, world))
        if rank == 0:
            index = {"format_version": CONFIG_VERSION, "world": world, "tensors": entries}
            (tmp / OPTIM_INDEX).write_text(json.dumps(index, indent=2))
            state = {**snapshot.state, "optimizer_param_groups": groups}
            write_main_files(tmp, snapshot, rng_tensors(), state)
    except BaseException as e:  # noqa: BLE001 - every rank must learn of it first
        error = e
    ok = torch.tensor([0 if error else 1], dtype=torch.int64, device=device)
    tdist.all_reduce(ok, op=tdist.ReduceOp.MIN)
    if ok.item() and rank == 0:
        try:
            publish(tmp, final)
        except BaseException as e:  # noqa: BLE001 - raised below, after the cleanup
            error = e
    if error is not None or not ok.item():
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        if error is None:
            raise Failure(f"saving {final.name} failed on another rank; see its message")
        raise_disk_full(error, run_dir, final)
        raise error
    tdist.barrier()
    return final


def prune(run_dir: Path, keep_last: int) -> None:
    """Delete all but the newest keep_last checkpoints (called after a save has completed)."""
    for old in run_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def clean_stale_temps(run_dir: Path) -> None:
    """Remove temp folders that a killed save left behind (they are never read)."""
    for tmp in (run_dir / "checkpoints").glob(".tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- merged export


def export_gptcli(loaded: Loaded, out: Path) -> Path:
    """A standalone gptcli checkpoint folder: LoRA adapters merged into full weights, so it
    needs no base checkpoint (sample, finetune and inspect read it as any other)."""
    info = {"task": loaded.info["task"]}
    model = GPT(loaded.config)
    load_weights(model, loaded.weights, weights_file(loaded.path))

    def write(tmp: Path) -> None:
        weights = weights_for_save(model.cfg, model.state_dict(), info)
        meta = {"format": "pt", "merged_from": str(loaded.path)}
        save_safetensors(weights, tmp / "model.safetensors", meta)
        config = config_json(loaded.config, info)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        shutil.copyfile(loaded.path / tokenizer.TOKENIZER_FILE, tmp / tokenizer.TOKENIZER_FILE)
        state = {k: v for k, v in loaded.state.items() if k != "optimizer_param_groups"}
        (tmp / "state.json").write_text(json.dumps(state, indent=2))

    return write_folder(out, write)
