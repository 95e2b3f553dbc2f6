"""Data parallelism under torchrun: the wrapper and the few collective calls the trainer needs.

Run alone (world 1) every function here is a no-op, so the trainer reads the same either way.
A new parallelism (FSDP) plugs in as another wrapper here.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.distributed as tdist
from torch.nn.parallel import DistributedDataParallel

from gptcli.device import Dist


class DataParallel:
    """DDP over the task's whole loss, or the module itself when run alone."""

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


def all_mean(value: torch.Tensor, dist: Dist) -> torch.Tensor:
    """The mean of a scalar over every rank."""
    if dist.world > 1:
        tdist.all_reduce(value)
        value = value / dist.world
    return value


def agree_on_signal(signum: int | None, dist: Dist) -> int | None:
    """The signal any rank received: every rank stops at the same step, or DDP hangs."""
    if dist.world <= 1:
        return signum
    seen = torch.tensor([signum or 0], dtype=torch.int64)
    tdist.all_reduce(seen, op=tdist.ReduceOp.MAX)
    return int(seen.item()) or None


def barrier(dist: Dist) -> None:
    if dist.world > 1:
        tdist.barrier()
