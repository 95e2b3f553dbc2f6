"""What a training run will cost, before it starts: the one estimator behind `inspect RECIPE`
and `pretrain/finetune RECIPE --dry-run`.

plan() returns plain data (what --json prints): parameters, tokens per step and in all, FLOPs,
the memory estimate per device with and without activation checkpointing and whether it fits,
what dtype and compile `auto` would decide, and the wall time from a few timed training steps on
this machine (cached per shape) or, with a named GPU, from its peak and a measured MFU. It trains
nothing and writes nothing into the run folder.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, NamedTuple

import torch

from gptcli import checkpoint, hf_format, load, memory, run
from gptcli.autotune import (
    PROBE_STEPS,
    compile_pays,
    expected_compile_s,
    time_training_steps,
    training_amp,
)
from gptcli.console import UserError
from gptcli.data import registry
from gptcli.data.manifest import read_manifest
from gptcli.data.tokenize import is_up_to_date
from gptcli.device import CPU_PROBES, CUDA_BF16_PEAKS, cached_probe, dtype_name, pick_device
from gptcli.finetune import model_from_init
from gptcli.model import GPT
from gptcli.recipe import ModelConfig, Recipe, TrainConfig

GIB = 2**30
LAYER_PREFIX = re.compile(r"^blocks\.\d+\.")  # a block's parameters, counted over layers


class Card(NamedTuple):
    """A GPU `--on` estimates for: its bf16 peak, the MFU a measured run reached, its memory."""

    name: str
    peak_key: str  # its key in device.CUDA_BF16_PEAKS (the datasheet's dense bf16 peak)
    mfu: float  # the 124M recipe's model FLOPs utilisation, bf16, compiled
    memory_bytes: int
    mfu_source: str


# The MFU figures are the ones benchmarks/README.md records (section "Plan estimates"); a test
# reads them there and compares, so the two cannot drift apart.
CARDS = {
    "h100": Card(
        "NVIDIA H100 80GB", "H100", 0.42, 80 * GIB, "the H200's measured 124M MFU (same peak)"
    ),
    "h200": Card("NVIDIA H200", "H200", 0.42, 141 * GIB, "124M, bf16, compiled, measured"),
}


def card(name: str) -> Card:
    found = CARDS.get(name.lower())
    if found is None:
        raise UserError(f"--on {name}: not a GPU the plan knows; use one of {', '.join(CARDS)}")
    return found


# --------------------------------------------------------------------------- the model


def finetune_model(recipe: Recipe) -> ModelConfig:
    """The model a finetune trains: init's, with the recipe's training-only keys."""
    if not recipe.init:
        raise UserError("finetune needs `init:` in the recipe (e.g. --set init=runs/tiny)")
    found = load.resolve(recipe.init)
    if hf_format.is_hf_folder(found):
        init_cfg = load.load(found).config
    else:
        init_cfg = checkpoint.model_config_from_json(found / "config.json")
    return model_from_init(recipe, init_cfg, found)


def data_plan(recipe: Recipe, run_dir: Path) -> dict[str, Any]:
    """The run folder's shards when they are ready, else what tokenize would read first."""
    manifest = read_manifest(run_dir)
    if manifest and is_up_to_date(recipe, run_dir):
        return {
            "status": "tokenized",
            "train_tokens": manifest["train"]["tokens"],
            "val_tokens": manifest["val"]["tokens"],
            "vocab_size": manifest["vocab_size"],
        }
    out: dict[str, Any] = {"status": "the tokenize step would run first"}
    size = corpus_bytes(recipe)
    if size is not None:
        out["corpus_bytes"] = size
    tokens = "unknown until tokenized"
    if recipe.data.max_tokens:
        tokens = f"at most {recipe.data.max_tokens:,} (data.max_tokens)"
    out["train_tokens"] = tokens
    return out


def corpus_bytes(recipe: Recipe) -> int | None:
    """The corpus's size where it is cheap to tell (builtin, local files), else None."""
    total = 0
    for source in recipe.data.sources():
        kind = registry.spec_kind(source.path)
        if kind == "builtin":
            total += int(recipe.data.builtin_mb * 1e6)
        elif registry.is_local(source.path) and Path(source.path).is_file():
            total += Path(source.path).stat().st_size
        elif registry.is_local(source.path) and Path(source.path).is_dir():
            total += sum(f.stat().st_size for f in Path(source.path).rglob("*") if f.is_file())
        else:
            return None
    return total


# --------------------------------------------------------------------------- memory


def memory_plan(
    cfg: ModelConfig, t: TrainConfig, amp: torch.dtype | None, device: torch.device, frozen: bool
) -> dict[str, Any]:
    """The estimate per device for the recipe's checkpointing, the totals with it off and on,
    what this device has, and the refusal the real run would give."""
    counts = memory.counts_before_building(cfg, frozen)
    report = memory.estimate_counts(cfg, counts, t, amp)
    totals = {
        memory.MODES[mode]: memory.estimate_counts(
            cfg, counts, dataclasses.replace(t, activation_checkpointing=mode), amp
        )["total"]
        for mode in (False, True)
    }
    out: dict[str, Any] = {"report": report, "totals": totals}
    available = memory.available_bytes(device)
    if available is not None:
        out["available"] = {"bytes": available.bytes, "limit": available.limit}
        out["fits"] = report["total"] <= available.bytes
    try:
        memory.check_training(cfg, t, device, frozen=frozen)
        out["refusal"] = None
    except UserError as e:
        out["refusal"] = str(e)
    return out


# --------------------------------------------------------------------------- time


def probe_batch(cfg: ModelConfig, t: TrainConfig) -> int:
    """Rows the timed steps take: the recipe's micro-batch, capped so the probe stays short."""
    return max(1, min(t.batch_size, 4096 // cfg.block_size))


def step_seconds(
    cfg: ModelConfig, t: TrainConfig, device: torch.device, amp: torch.dtype | None
) -> float:
    """Seconds of one training step of probe_batch rows, from a few timed steps (the first two
    warm up); on a CPU measured once per shape, optimizer and thread count, then cached."""
    rows = probe_batch(cfg, t)

    def measure() -> float:
        [seconds] = time_training_steps(cfg, rows, device, [amp], t, rounds=2, warmup=2)
        return seconds

    if device.type != "cpu":
        return measure()
    shape = f"plan step|{rows}|{amp}|{t.optimizer}|{sorted(dataclasses.asdict(cfg).items())}"
    return cached_probe(CPU_PROBES, shape, measure)


def compile_decision(
    t: TrainConfig, cfg: ModelConfig, device: torch.device, amp: torch.dtype | None, step_s: float
) -> tuple[bool, str]:
    """What train.compile would do at the first step (auto on a CPU: the rule on the probe's
    step time; the run then checks compiled steps against eager ones)."""
    if t.compile != "auto":
        return t.compile == "on", f"compile: {t.compile}"
    if device.type == "cuda":
        return True, "compiled on a GPU"
    if device.type != "cpu":
        return False, f"eager on {device.type}"
    if t.max_steps <= PROBE_STEPS:
        return False, "too few steps to repay a compile"
    return compile_pays(t.max_steps, step_s, *expected_compile_s(cfg, t.batch_size, amp, "LMTask"))


def gpu_plan(
    name: str, cfg: ModelConfig, t: TrainConfig, flops_per_token: int, frozen: bool
) -> dict[str, Any]:
    """The same run on a named GPU in bf16: tokens/s from its peak and MFU, memory against
    its size."""
    gpu = card(name)
    peak = CUDA_BF16_PEAKS[gpu.peak_key]
    tokens_per_s = peak * gpu.mfu / flops_per_token
    total_tokens = t.max_steps * t.batch_size * t.grad_accum * cfg.block_size
    counts = memory.counts_before_building(cfg, frozen)
    need = memory.estimate_counts(cfg, counts, t, torch.bfloat16)["total"]
    return {
        "card": gpu.name,
        "peak_flops": peak,
        "mfu": gpu.mfu,
        "mfu_source": gpu.mfu_source,
        "dtype": "bf16",
        "tokens_per_s": round(tokens_per_s, 1),
        "estimated_train_s": round(total_tokens / tokens_per_s, 3),
        "memory_total": need,
        "memory_bytes": gpu.memory_bytes,
        "fits": need <= gpu.memory_bytes,
    }


def time_here(
    cfg: ModelConfig, t: TrainConfig, device: torch.device, amp: torch.dtype | None
) -> dict[str, Any]:
    """The run's time on this machine from timed steps, and what compile: auto would decide."""
    rows = probe_batch(cfg, t)
    probe_s = step_seconds(cfg, t, device, amp)
    tokens_per_step = t.batch_size * t.grad_accum * cfg.block_size
    step_s = probe_s * tokens_per_step / (rows * cfg.block_size)
    compiled, why = compile_decision(t, cfg, device, amp, step_s)
    return {
        "compile": compiled,
        "compile_reason": why,
        "probe_tokens_per_s": round(rows * cfg.block_size / probe_s, 1),
        "step_s": round(step_s, 4),
        "estimated_train_s": round(step_s * t.max_steps, 1),
    }


# --------------------------------------------------------------------------- the plan


def plan(recipe: Recipe, command: str = "pretrain", on: str | None = None) -> dict[str, Any]:
    """The plan of `command` (pretrain or finetune) for recipe, on this machine and, with on,
    on that GPU; trains nothing and writes nothing into the run folder."""
    if on is not None:
        card(on)  # an unknown card is refused before any timing
    frozen = command == "finetune" and recipe.finetune.lora.rank > 0
    run_dir = run.folder(recipe)
    data = data_plan(recipe, run_dir)
    if command == "finetune":
        cfg = finetune_model(recipe)
    else:
        vocab = recipe.model.vocab_size or data.get("vocab_size") or recipe.tokenizer.vocab_size
        cfg = dataclasses.replace(recipe.model, vocab_size=vocab)
    with torch.device("meta"):
        model = GPT(cfg)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    if cfg.tie_embeddings:
        shapes.pop("lm_head.weight")
    t = recipe.train
    try:
        device, unavailable = pick_device(t.device), None
    except UserError as e:  # e.g. a GPU recipe planned on a laptop: --on still estimates it
        device, unavailable = torch.device("cpu"), str(e)
    amp = training_amp(device, t.dtype, cfg, t.batch_size)
    tokens_per_step = t.batch_size * t.grad_accum * cfg.block_size
    flops_per_token = model.flops_per_token()
    mem = memory_plan(cfg, t, amp, device, frozen)
    if unavailable:
        mem.update(refusal=unavailable, available=None, fits=None)
    # a run that cannot fit is not timed either: its steps would not fit
    timed = mem["refusal"] is None and mem.get("fits") is not False
    here = time_here(cfg, t, device, amp) if timed else {"compile": None}
    out: dict[str, Any] = {
        "command": command,
        "params": param_counts(shapes, cfg.tie_embeddings),
        "flops_per_token": flops_per_token,
        "tokens_per_step": tokens_per_step,
        "max_steps": t.max_steps,
        "tokens_total": tokens_per_step * t.max_steps,
        "flops_total": flops_per_token * tokens_per_step * t.max_steps,
        "memory": mem["report"],
        "memory_totals": mem["totals"],
        "memory_available": mem.get("available"),
        "memory_fits": mem.get("fits"),
        "refusal": mem["refusal"],
        "auto": {
            "device": t.device if unavailable else device.type,
            "dtype": dtype_name(amp),
            "compile": here.pop("compile"),
        },
        "data": data,
        "run_dir": str(run_dir),
        "probe_device": device.type,
        "compile_reason": "not timed: "
        + ("the device is not here" if unavailable else "the run does not fit in memory"),
        "probe_tokens_per_s": None,
        "step_s": None,
        "estimated_train_s": None,
        **here,
    }
    if on is not None:
        out["on"] = gpu_plan(on, cfg, t, flops_per_token, frozen)
    return out


def param_counts(shapes: dict[str, list[int]], tied: bool) -> dict[str, int]:
    """Parameters per module kind, summed over layers; 'total' counts tied weights once."""
    groups: dict[str, int] = {}
    for name, shape in shapes.items():
        n = 1
        for d in shape:
            n *= d
        key = LAYER_PREFIX.sub("blocks.*.", name).rsplit(".", 1)[0]
        key = key.replace("norm1", "norm").replace("norm2", "norm")
        groups[key] = groups.get(key, 0) + n
    if tied:
        groups.setdefault("lm_head", 0)  # shares wte's matrix
    groups["total"] = sum(v for k, v in groups.items())
    return groups
