"""Parallelism under torchrun: the wrappers (DDP, FSDP2) and the few collectives the trainer needs.

Run alone (world 1) every function here is a no-op, so the trainer reads the same either way.
DDP keeps a whole copy of the model on every rank; FSDP2 shards parameters, gradients and
optimizer state over the ranks, for models whose training state does not fit one device.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist
from torch.nn.parallel import DistributedDataParallel

from gptcli import checkpoint_tensors, console, memory
from gptcli.console import UserError
from gptcli.device import Dist

# parameters + gradients + AdamW's two moments, all fp32
TRAIN_BYTES_PER_PARAM = 16
# auto shards once that training state passes this share of one device's free memory
FSDP_SHARE = 0.6


def free_bytes(device: torch.device) -> int:
    """Free memory this rank may use (memory.available_bytes: a GPU's free memory, or the RAM,
    cgroup and ulimit -v room split over the ranks torchrun starts on this machine)."""
    available = memory.available_bytes(device) or memory.available_bytes(torch.device("cpu"))
    return available.bytes if available else 0


def choose(setting: str, n_params: int, optimizer: str, dist: Dist, device: torch.device) -> str:
    """ "none" alone, else "ddp" or "fsdp" as train.parallel says; auto logs which and why."""
    if dist.world <= 1:
        if setting == "fsdp":
            console.info("train: parallel fsdp: one process, nothing to shard")
        return "none"
    kind = setting
    if setting == "auto":
        need, free = n_params * TRAIN_BYTES_PER_PARAM, free_bytes(device)
        kind = "fsdp" if need > FSDP_SHARE * free else "ddp"
        relation = "over" if kind == "fsdp" else "within"
        console.info(
            f"train: parallel auto -> {kind}: parameters, gradients and AdamW state "
            f"({need / 2**30:.2f} GiB) are {relation} {FSDP_SHARE:.0%} of the "
            f"{free / 2**30:.2f} GiB free per rank"
        )
    if kind == "fsdp" and optimizer == "muon":
        raise UserError(
            "train.optimizer muon does not run sharded (train.parallel fsdp): use adamw with "
            "fsdp (set train.optimizer: adamw), or train.parallel: ddp if the model fits"
        )
    return kind


class DataParallel:
    """DDP over the task's whole loss, or the module itself when run alone."""

    shards = False

    def __init__(self, module: torch.nn.Module, dist: Dist, device: torch.device) -> None:
        self.ddp: DistributedDataParallel | None = None
        self.module = module
        if dist.world > 1:
            ids = [device.index] if device.type == "cuda" else None
            self.ddp = DistributedDataParallel(module, device_ids=ids)
            self.module = self.ddp

    def no_sync(self, syncing: bool) -> Any:
        """Skip the gradient all-reduce on every micro-batch but the last of a step."""
        if self.ddp is None or syncing:
            return contextlib.nullcontext()
        return self.ddp.no_sync()

    def evaluating(self) -> Any:
        return contextlib.nullcontext()

    def full_weights(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Every parameter whole: this rank holds the whole model."""
        return model.state_dict()

    def load_weights(self, model: torch.nn.Module, weights: dict, where: Path) -> None:
        checkpoint_tensors.load_weights(model, weights, where)


class ShardedDataParallel:
    """FSDP2: each block, then the whole task step, sharded over a 1-D mesh of all ranks.

    Parameters are stored sharded in fp32; with mixed precision they are gathered in the
    compute dtype and gradients are reduced in fp32."""

    shards = True

    def __init__(
        self,
        module: torch.nn.Module,
        blocks: list[torch.nn.Module],
        dist: Dist,
        device: torch.device,
        dtype: torch.dtype | None,
    ) -> None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(device.type, (dist.world,))
        policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
        for block in blocks:
            fully_shard(block, mesh=mesh, mp_policy=policy)
        self.module = fully_shard(module, mesh=mesh, mp_policy=policy)

    def no_sync(self, syncing: bool) -> Any:
        """Reduce-scatter gradients only on the last micro-batch of a step."""
        self.module.set_requires_gradient_sync(syncing)
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def evaluating(self) -> Any:
        """Evaluation calls the model, not the task step: gather the parameters the root
        holds (embeddings, head); each block gathers its own."""
        self.module.unshard()
        try:
            yield
        finally:
            self.module.reshard()

    def full_weights(self, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        """Every parameter whole, on the CPU of rank 0 (None elsewhere); all ranks call it."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = get_model_state_dict(model, options=options)
        return weights if tdist.get_rank() == 0 else None

    def load_weights(self, model: torch.nn.Module, weights: dict, where: Path) -> None:
        """Every rank holds the whole checkpoint and keeps its own shard of each tensor."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        checkpoint_tensors.check_shapes(model.state_dict(), weights, where, "config.json")
        options = StateDictOptions(full_state_dict=True, strict=not model.cfg.tie_embeddings)
        set_model_state_dict(model, weights, options=options)


def wrap(
    kind: str,
    module: torch.nn.Module,
    blocks: list[torch.nn.Module],
    dist: Dist,
    device: torch.device,
    dtype: torch.dtype | None,
) -> DataParallel | ShardedDataParallel:
    """The wrapper choose() picked, around the task step (FSDP shards the model in place)."""
    if kind == "fsdp":
        return ShardedDataParallel(module, blocks, dist, device, dtype)
    return DataParallel(module, dist, device)


def all_mean(value: torch.Tensor, dist: Dist) -> torch.Tensor:
    """The mean of a scalar over every rank."""
    if dist.world > 1:
        tdist.all_reduce(value)
        value = value / dist.world
    return value


def collective_device() -> torch.device:
    """Where a tensor sent between ranks must live: NCCL moves GPU tensors only."""
    if tdist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def agree_on_signal(signum: int | None, dist: Dist) -> int | None:
    """The signal any rank received: every rank stops at the same step, or DDP hangs."""
    if dist.world <= 1:
        return signum
    seen = torch.tensor([signum or 0], dtype=torch.int64, device=collective_device())
    tdist.all_reduce(seen, op=tdist.ReduceOp.MAX)
    return int(seen.item()) or None


def barrier(dist: Dist) -> None:
    if dist.world > 1:
        tdist.barrier()
