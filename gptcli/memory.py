"""Memory per rank, estimated before anything is allocated, so a run that cannot fit is refused
with its remedies instead of dying of out-of-memory, and a user sees what each switch saves.

Parameters, gradients and optimizer state follow from the trained parameters and the optimizer.
Activations count what the eager model saves for backward per micro-batch, tensor by tensor, as
the model in gptcli.model and the loss in gptcli.kernels save them (tests/test_memory.py counts
the real saved tensors against it); torch.compile usually saves less. Inference holds the
weights and the KV cache of its rows. available_bytes says what the process may still allocate.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import torch

from gptcli import kernels
from gptcli.console import UserError
from gptcli.files import naming_file, read_json, typed_fields, write_atomic
from gptcli.model import GPT, mlp_hidden_size
from gptcli.recipe import ModelConfig, TrainConfig, need

try:  # the address-space limit (ulimit -v) where the platform has one
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None

MEMORY_FILE = "memory.json"  # in the run folder: the report and, on CUDA, the measured peak
FP32 = 4  # bytes of the residual stream, norms, statistics, gradients and optimizer state
INDEX = 8  # bytes of an int64 token id

# activation_checkpointing values and how the report names them
MODES: dict[bool | str, str] = {False: "off", "selective": "selective", True: "every_block"}


def block_bytes_per_token(cfg: ModelConfig, act: int) -> int:
    """Bytes one block saves for backward per token; act is the bytes of a matmul's operands
    (4 in fp32, 2 under bf16 autocast), norms and the residual stay fp32."""
    c, hidden = cfg.n_embd, mlp_hidden_size(cfg)
    stats = 1 if cfg.norm == "rmsnorm" else 2  # 1/rms, or mean and 1/std, per row
    # each norm: its input (or its normalised fp32 copy) and the next matmul's input
    norm = (FP32 + act) * c + FP32 * stats
    attention = 3 * act * c  # q, k, v (views of one qkv output) for the attention kernel
    if cfg.positions == "rope" or cfg.qk_norm:
        attention += 2 * act * c  # rotated or normalised q and k are new tensors
    if cfg.qk_norm:
        attention += 2 * FP32 * c  # the normalised fp32 copies of q and k
    attention += act * c + FP32 * cfg.n_head  # attention output (the projection's input), lse
    mlp = (4 if cfg.mlp == "swiglu" else 2) * act * hidden  # activation input and output
    dropout = 0
    if cfg.dropout > 0:  # masks after attention and MLP; attention runs unfused, keeping its
        # fp32 probabilities, their mask and the dropped ones (heads x context each per token)
        dropout = 2 * act * c + 3 * FP32 * cfg.n_head * cfg.block_size
    return 2 * norm + attention + mlp + dropout


def loss_bytes(cfg: ModelConfig, tokens: int, act: int) -> int:
    """What the final norm and the loss save: the chunked kernel keeps its gradients for x and
    the head, the plain path the fp32 log-probabilities of every logit."""
    c, vocab = cfg.n_embd, cfg.vocab_size
    norm = tokens * (FP32 * c + FP32 * (1 if cfg.norm == "rmsnorm" else 2))
    if tokens * vocab >= kernels.CHUNKED_LOSS_MIN:
        return norm + tokens * FP32 * c + FP32 * vocab * c
    head_copy = 2 * vocab * c if act == 2 else 0  # autocast's bf16 copy of the head
    return norm + tokens * (act * c + FP32 * vocab + INDEX) + head_copy


def block_matrices(cfg: ModelConfig) -> int:
    """Weights of one block's matrices (attention's qkv and projection, the MLP's)."""
    c = cfg.n_embd
    return 4 * c * c + (3 if cfg.mlp == "swiglu" else 2) * c * mlp_hidden_size(cfg)


def activation_bytes(cfg: ModelConfig, batch: int, mode: bool | str, amp: bool = False) -> int:
    """Bytes saved for backward by one micro-batch of batch full-length sequences; mode is the
    activation_checkpointing value (a checkpointed block keeps only its input). Under bf16
    autocast, blocks that are not recomputed also keep bf16 copies of their weights."""
    tokens = batch * cfg.block_size
    act = 2 if amp else FP32
    kept = cfg.n_layer if mode is True else (cfg.n_layer + 1) // 2 if mode == "selective" else 0
    per_token = (cfg.n_layer - kept) * block_bytes_per_token(cfg, act) + kept * FP32 * cfg.n_embd
    if cfg.dropout > 0:
        per_token += FP32 * cfg.n_embd  # the embeddings' dropout mask
    total = tokens * (INDEX + per_token) + loss_bytes(cfg, tokens, act)
    if amp:
        total += 2 * (cfg.n_layer - kept) * block_matrices(cfg)
    return total


class ParameterCounts(NamedTuple):
    """What the training state follows from: the parameters' bytes, and counts of elements."""

    bytes: int  # every parameter, tied ones once, in its own dtype
    trained: int  # elements that get gradients
    matrices: int  # trained elements of the blocks' matrices (what Muon trains)
    root: int  # elements outside the blocks (embeddings, head, final norm)
    block: int  # elements of the largest block


def parameter_counts(model: GPT, repeat: int = 1) -> ParameterCounts:
    """model's parameter counts, its blocks counted repeat times each: a model built with one
    block stands for n_layer alike ones, and builds in no time whatever the depth."""
    size, trained, matrices, root = 0, 0, 0, 0
    for name, p in unique_parameters(model):
        times = repeat if name.startswith("blocks.") else 1
        size += times * p.numel() * p.element_size()
        if not name.startswith("blocks."):
            root += p.numel()
        if p.requires_grad:
            trained += times * p.numel()
            if name.startswith("blocks.") and p.dim() == 2:
                matrices += times * p.numel()
    block = max((sum(p.numel() for p in b.parameters()) for b in model.blocks), default=0)
    return ParameterCounts(size, trained, matrices, root, block)


def estimate(
    model: GPT,
    t: TrainConfig,
    amp: torch.dtype | None = None,
    world: int = 1,
    sharded: bool = False,
) -> dict[str, Any]:
    """The bytes each rank holds while training model with t: the whole model, its gradients
    and optimizer state (data parallel), or 1/world of them (sharded, FSDP), and its own
    micro-batch's activations."""
    return estimate_counts(model.cfg, parameter_counts(model), t, amp, world, sharded)


def estimate_counts(
    cfg: ModelConfig,
    counts: ParameterCounts,
    t: TrainConfig,
    amp: torch.dtype | None = None,
    world: int = 1,
    sharded: bool = False,
) -> dict[str, Any]:
    """estimate for a model of cfg with these parameter counts."""
    trained = counts.trained
    muon = counts.matrices if t.optimizer == "muon" else 0
    # AdamW keeps two fp32 moments per parameter, Muon one momentum per hidden matrix
    optimizer = FP32 * (2 * (trained - muon) + muon)
    report: dict[str, Any] = {
        "ranks": world,
        "micro_batch": [t.batch_size, cfg.block_size],
        "parameters": counts.bytes,
        "gradients": FP32 * trained,
        "optimizer": optimizer,
    }
    if sharded and world > 1:
        report["sharded"] = True
        for key in ("parameters", "gradients", "optimizer"):
            report[key] = -(-report[key] // world)
        report["gathered"] = gathered_bytes(counts, cfg.n_layer, amp)
    elif world > 1:
        report["ddp_buckets"] = FP32 * trained  # DDP all-reduces through its own copy
    report["activations"] = {
        name: activation_bytes(cfg, t.batch_size, mode, amp is not None)
        for mode, name in MODES.items()
    }
    mode = t.activation_checkpointing
    report["activation_checkpointing"] = MODES[mode]
    # checkpointing recomputes one block at a time during backward, which holds its activations
    act = 2 if amp is not None else FP32
    one_block = t.batch_size * cfg.block_size * block_bytes_per_token(cfg, act)
    report["recompute"] = one_block if mode else 0
    state = ("parameters", "gradients", "optimizer", "ddp_buckets", "gathered")
    fixed = sum(report[k] for k in state if k in report)
    report["total"] = fixed + report["activations"][MODES[mode]] + report["recompute"]
    return report


def gathered_bytes(counts: ParameterCounts, n_layer: int, amp: torch.dtype | None) -> int:
    """What FSDP gathers whole on each rank, in the compute dtype: the root's parameters
    (embeddings, head, final norm) for the whole step, and two blocks at a time (the one
    running and the next, prefetched)."""
    size = 2 if amp is not None else FP32
    return size * (counts.root + min(2, n_layer) * counts.block)


def unique_parameters(model: GPT) -> list[tuple[str, torch.nn.Parameter]]:
    """Named parameters with tied ones once."""
    seen: set[int] = set()
    out = []
    for name, p in model.named_parameters():
        if id(p) not in seen:
            seen.add(id(p))
            out.append((name, p))
    return out


def mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def summary(report: dict[str, Any]) -> str:
    """The report as one log line."""
    acts, mode = report["activations"], report["activation_checkpointing"]
    options = ", ".join(f"{name.replace('_', ' ')} {mib(n)}" for name, n in acts.items())
    batch, length = report["micro_batch"]
    rank = " per rank" if report["ranks"] > 1 else ""
    if report.get("sharded"):
        rank += f" (sharded over {report['ranks']} ranks)"
    gathered = f", gathered {mib(report['gathered'])}" if "gathered" in report else ""
    return (
        f"memory{rank} (estimate): parameters {mib(report['parameters'])}, "
        f"gradients {mib(report['gradients'])}, optimizer {mib(report['optimizer'])}{gathered}, "
        f"activations {mib(acts[mode])} per {batch}x{length} micro-batch with checkpointing "
        f"{mode.replace('_', ' ')} ({options}); total {mib(report['total'])}"
    )


def save(run_dir: Path, report: dict[str, Any]) -> None:
    """Record the report in the run folder, where `inspect RUN` reads it."""
    write_atomic(run_dir / MEMORY_FILE, (json.dumps(report, indent=1) + "\n").encode())


# The report's keys as `inspect RUN` reads them, with their types (the first seven always
# present); more keys may follow, and are shown only by --json.
REPORT_TYPES: dict[str, Any] = {
    "parameters": int,
    "gradients": int,
    "optimizer": int,
    "total": int,
    "micro_batch": list[int],
    "activations": dict,
    "activation_checkpointing": str,
    "ranks": int,
    "sharded": bool,
    "gathered": int,
    "ddp_buckets": int,
    "recompute": int,
    "peak_allocated": int,
}


def load(run_dir: Path) -> dict[str, Any] | None:
    """The run's memory report, each key checked by type (exit 2 naming the file and key)."""
    path = run_dir / MEMORY_FILE
    if not path.is_file():
        return None
    report = read_json(path)
    missing = [k for k in list(REPORT_TYPES)[:7] if k not in report]
    if missing:
        raise UserError(f"{path}: missing key '{missing[0]}' (delete it: it is only a report)")
    report.update(typed_fields(path, report, REPORT_TYPES))
    with naming_file(path):
        ok = len(report["micro_batch"]) == 2
        need("micro_batch", report["micro_batch"], ok, "[batch size, sequence length]")
        acts = report["activations"]
        ok = all(type(v) is int for v in acts.values())
        need("activations", acts, ok, "a mapping of checkpointing modes to byte counts")
    return report


# --------------------------------------------------------------------------- does it fit

# the recipe key that lets a run start whatever its estimate; the refusal names it
CHECK_KEY = "train.memory_check"
# the flag of sample, chat, serve and eval that loads a model whatever its estimate (a flag, not
# a recipe key: what fits depends on the machine sampling, not on the run)
INFERENCE_CHECK_FLAG = "--no-memory-check"
_inference_check = True
# cgroup v1 writes "no limit" as a number near 2**63
NO_LIMIT = 1 << 62


class Available(NamedTuple):
    """Bytes this process may still allocate on a device, and the limit that says so."""

    bytes: int
    limit: str


def available_bytes(device: torch.device) -> Available | None:
    """What this rank may still allocate on device: a GPU's free memory; on a CPU the least of
    the available RAM, the cgroup's limit less its usage (both shared by the ranks torchrun
    starts on this machine) and the address space RLIMIT_AS leaves. None where it cannot be
    told (MPS)."""
    if device.type == "cuda":
        return Available(torch.cuda.mem_get_info(device)[0], f"free on {device}")
    if device.type != "cpu":
        return None
    ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    per_rank = f" split over {ranks} ranks" if ranks > 1 else ""
    found = []
    ram = meminfo_available()
    if ram is not None:
        found.append(Available(ram // ranks, f"available RAM (MemAvailable){per_rank}"))
    cgroup = cgroup_room()
    if cgroup is not None:
        found.append(Available(cgroup // ranks, f"the cgroup's memory limit{per_rank}"))
    address_space = address_space_room()
    if address_space is not None:
        found.append(Available(address_space, "the address space left by ulimit -v (RLIMIT_AS)"))
    if not found:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        found.append(Available(free // ranks, f"free RAM{per_rank}"))
    return min(found)


def meminfo_available() -> int | None:
    """The kernel's estimate of RAM that can be allocated without swapping, in bytes."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def cgroup_room() -> int | None:
    """Bytes the process's memory cgroup and those above it still allow (the least of them), or
    None without a limit: cgroup v2's memory.max, v1's memory.limit_in_bytes, less the usage
    (reclaimable page cache not counted)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    rooms = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2
            root = Path("/sys/fs/cgroup")
            files = ("memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):
            root = Path("/sys/fs/cgroup/memory")
            files = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
        else:
            continue
        folder = root / path.lstrip("/")
        while True:
            room = cgroup_folder_room(folder, *files)
            if room is not None:
                rooms.append(room)
            if folder == root or root not in folder.parents:
                break
            folder = folder.parent
    return min(rooms, default=None)


def cgroup_folder_room(folder: Path, limit_file: str, usage_file: str, inactive: str) -> int | None:
    """One cgroup folder's limit less its usage; None where it sets no limit or is not there."""
    try:
        limit_text = (folder / limit_file).read_text().strip()
        if limit_text == "max" or int(limit_text) >= NO_LIMIT:
            return None
        usage = int((folder / usage_file).read_text())
        stat = (folder / "memory.stat").read_text().splitlines()
    except (OSError, ValueError):
        return None
    cache = sum(int(v) for k, _, v in (s.partition(" ") for s in stat) if k == inactive)
    return max(0, int(limit_text) - max(0, usage - cache))


def address_space_room() -> int | None:
    """Bytes of address space RLIMIT_AS (ulimit -v) leaves this process, or None unlimited."""
    if resource is None:
        return None
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit == resource.RLIM_INFINITY:
        return None
    used = 0
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    used = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return max(0, limit - used)


def check_fits(need: int, device: torch.device, what: str, remedies: list[str]) -> None:
    """Refuse (exit 2) what needs more than device has available, before it is allocated: the
    line gives the estimate, what is available and which limit says so, and the remedies."""
    available = available_bytes(device)
    if available is None or need <= available.bytes:
        return
    raise UserError(
        f"{what} needs about {mib(need)} (estimate) but {mib(available.bytes)} is available "
        f"on {device.type} ({available.limit}): {'; '.join(remedies)}"
    )


def counts_before_building(cfg: ModelConfig, frozen: bool = False) -> ParameterCounts:
    """The parameter counts of a model of cfg, from one block built on the meta device (no
    memory, and no time whatever the depth). frozen: no weight gets a gradient (LoRA's base)."""
    with torch.device("meta"):
        one_block = GPT(dataclasses.replace(cfg, n_layer=1))
    if frozen:
        one_block.requires_grad_(False)
    return parameter_counts(one_block, repeat=cfg.n_layer)


def training_bytes(cfg: ModelConfig, t: TrainConfig, world: int = 1, frozen: bool = False) -> int:
    """The least each rank needs to train a model of cfg with t, before it is built: of the
    dtypes and sharding the recipe leaves to auto, those that need least (it refuses only a run
    that fits in no way it may run). frozen: the base weights get no gradients (LoRA)."""
    counts = counts_before_building(cfg, frozen)
    amps = {"fp32": [None], "bf16": [torch.bfloat16]}.get(t.dtype, [None, torch.bfloat16])
    sharded = world > 1 and t.parallel != "ddp"
    return min(estimate_counts(cfg, counts, t, amp, world, sharded)["total"] for amp in amps)


def check_training(
    cfg: ModelConfig, t: TrainConfig, device: torch.device, world: int = 1, frozen: bool = False
) -> None:
    """Refuse a training run whose estimate per rank exceeds what this rank may allocate,
    unless the recipe turns the check off."""
    if not t.memory_check:
        return
    remedies = []
    if t.activation_checkpointing is not True:
        remedies.append("set train.activation_checkpointing: true (recompute every block)")
    if t.batch_size > 1:
        remedies.append(
            "lower train.batch_size (raise train.grad_accum to keep the tokens per step)"
        )
    if world > 1 and t.parallel == "ddp":
        remedies.append("shard the model over the ranks with train.parallel: fsdp")
    elif world <= 1:
        remedies.append("shard it over several GPUs (torchrun, train.parallel: fsdp)")
    remedies += ["a smaller model", f"or set {CHECK_KEY}: false to try anyway"]
    need = training_bytes(cfg, t, world, frozen)
    rank = " per rank" if world > 1 else ""
    check_fits(need, device, f"training{rank}", remedies)


def inference_bytes(cfg: ModelConfig, rows: int, dtype: torch.dtype) -> int:
    """Bytes inference holds: the weights, built in fp32 before any cast, and the KV cache of
    rows sequences of block_size tokens in dtype."""
    params = counts_before_building(cfg).bytes  # built fp32
    size = torch.empty((), dtype=dtype).element_size()
    cache = 2 * cfg.n_layer * rows * cfg.block_size * cfg.n_embd * size
    return params + cache


def set_inference_check(on: bool) -> None:
    """The command's --memory-check/--no-memory-check (on unless a command turns it off), set
    once as --quiet is, for check_inference wherever the command loads its model."""
    global _inference_check
    _inference_check = on


def check_inference(
    cfg: ModelConfig, rows: int, dtype: str, device: torch.device, what: str, fewer: str = ""
) -> None:
    """Refuse, before the model is built, inference of rows at a time that cannot fit, unless
    the command was given --no-memory-check; dtype is the command's --dtype (auto may pick
    bf16, so it is counted so)."""
    if not _inference_check:
        return
    cache_dtype = torch.float32 if dtype == "fp32" else torch.bfloat16
    remedies = [f"fewer rows at a time ({fewer})"] if fewer and rows > 1 else []
    if dtype == "fp32":
        remedies.append("--dtype bf16 (half the KV cache)")
    remedies += ["a machine or GPU with more memory", f"or {INFERENCE_CHECK_FLAG} to try anyway"]
    check_fits(inference_bytes(cfg, rows, cache_dtype), device, what, remedies)
