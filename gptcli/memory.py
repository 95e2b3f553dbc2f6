"""Training memory per rank, estimated before step 1, so a user sees what each switch saves
before a run dies of out-of-memory.

Parameters, gradients and optimizer state follow from the trained parameters and the optimizer.
Activations count what the eager model saves for backward per micro-batch, tensor by tensor, as
the model in gptcli.model and the loss in gptcli.kernels save them (tests/test_memory.py counts
the real saved tensors against it); torch.compile usually saves less.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from gptcli import kernels
from gptcli.console import UserError
from gptcli.files import naming_file, read_json, typed_fields, write_atomic
from gptcli.model import GPT, mlp_hidden_size
from gptcli.recipe import ModelConfig, TrainConfig, need

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
    cfg = model.cfg
    params, trained, muon = 0, 0, 0
    for name, p in unique_parameters(model):
        params += p.numel() * p.element_size()
        if p.requires_grad:
            trained += p.numel()
            if t.optimizer == "muon" and name.startswith("blocks.") and p.dim() == 2:
                muon += p.numel()
    # AdamW keeps two fp32 moments per parameter, Muon one momentum per hidden matrix
    optimizer = FP32 * (2 * (trained - muon) + muon)
    report: dict[str, Any] = {
        "ranks": world,
        "micro_batch": [t.batch_size, cfg.block_size],
        "parameters": params,
        "gradients": FP32 * trained,
        "optimizer": optimizer,
    }
    if sharded and world > 1:
        report["sharded"] = True
        for key in ("parameters", "gradients", "optimizer"):
            report[key] = -(-report[key] // world)
        report["gathered"] = gathered_bytes(model, amp)
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


def gathered_bytes(model: GPT, amp: torch.dtype | None) -> int:
    """What FSDP gathers whole on each rank, in the compute dtype: the root's parameters
    (embeddings, head, final norm) for the whole step, and two blocks at a time (the one
    running and the next, prefetched)."""
    size = 2 if amp is not None else FP32
    root = sum(p.numel() for name, p in unique_parameters(model) if not name.startswith("blocks."))
    block = max(sum(p.numel() for p in b.parameters()) for b in model.blocks)
    return size * (root + min(2, len(model.blocks)) * block)


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
