"""Optimizers and the learning-rate schedule the trainer steps with.

AdamW for everything, or Muon for the blocks' weight matrices with AdamW for the rest. Each
parameter group keeps its `base_lr`; the schedule multiplies it by a factor every step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from gptcli.device import cpu_has_native_bf16
from gptcli.recipe import TrainConfig

Optimizer = torch.optim.Optimizer


def param_groups(params: Iterable[nn.Parameter], weight_decay: float) -> list[dict]:
    """Weight decay on matrices (linear and embedding weights) only, not on biases or norms."""
    decay, no_decay = [], []
    seen = set()
    for p in params:
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def lr_factor(step: int, t: TrainConfig) -> float:
    """Multiplier on each parameter group's base lr: linear warmup, then cosine decay to
    min_lr_ratio, or warmup-stable-decay (flat, then linear decay over decay_fraction), or flat."""
    if step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    if t.lr_schedule == "constant":
        return 1.0
    if t.lr_schedule == "wsd":
        decay_start = t.max_steps - int(t.decay_fraction * t.max_steps)
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start) / max(1, t.max_steps - decay_start))
        return 1.0 - progress * (1.0 - t.min_lr_ratio)
    progress = min(1.0, (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps))
    return t.min_lr_ratio + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - t.min_lr_ratio)


def lr_at(step: int, t: TrainConfig) -> float:
    return t.lr * lr_factor(step, t)


class BatchedMuon(torch.optim.Muon):
    """torch's Muon, with the Newton-Schulz iterations of same-shape matrices run as one batch.

    torch iterates matrix by matrix, many small matmuls that dominate a CPU step of a small
    model (benchmarks/README.md); batched by shape (tall matrices turned wide, as torch does)
    they are a few bmm calls. Same state ("momentum_buffer") and the same arithmetic as
    torch.optim.Muon, so checkpoints and resume work either way. The iterations run in
    ns_dtype: bf16 as torch's, or fp32 where bf16 matmuls are emulated (ns_dtype_for).
    """

    def __init__(
        self,
        params,  # noqa: ANN001 - Optimizer's params
        ns_dtype: torch.dtype = torch.bfloat16,
        **options,
    ) -> None:
        if options.get("adjust_lr_fn") not in (None, "original"):  # the only scaling step() does
            raise ValueError("BatchedMuon scales lr as torch's default ('original') only")
        super().__init__(params, **options)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 - Optimizer.step's signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            a, b, c = group["ns_coefficients"]
            by_shape: dict[tuple, list] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                wide = update.T if update.size(0) > update.size(1) else update
                by_shape.setdefault(tuple(wide.shape), []).append((p, wide))
            for items in by_shape.values():
                x = torch.stack([wide for _, wide in items]).to(self.ns_dtype)
                x = x / x.norm(dim=(1, 2), keepdim=True).clamp(min=group["eps"])
                for _ in range(group["ns_steps"]):
                    gram = x @ x.mT
                    x = torch.baddbmm(
                        x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a
                    )
                for (p, _), update in zip(items, x, strict=True):
                    update = update.T if p.size(0) > p.size(1) else update
                    p.mul_(1 - lr * group["weight_decay"])
                    # torch's default lr scaling ("original"): sqrt(max(1, rows / cols))
                    p.add_(update, alpha=-lr * math.sqrt(max(1.0, p.size(0) / p.size(1))))
        return loss


def ns_dtype_for(device: torch.device) -> torch.dtype:
    """bf16 for Muon's Newton-Schulz iterations, as torch runs them, except on a CPU without
    native bf16: there its emulated bf16 matmuls made them ~30x slower than fp32 (a Muon
    step of the shakespeare recipe took seconds on an AVX2-only CPU)."""
    if device.type == "cpu" and not cpu_has_native_bf16():
        return torch.float32
    return torch.bfloat16


def build_optimizers(
    model: torch.nn.Module, t: TrainConfig, device: torch.device
) -> list[Optimizer]:
    """AdamW for everything, or Muon for the blocks' weight matrices and AdamW for the rest
    (embeddings, head, norms, biases), as the Muon authors recommend."""
    fused = device.type in ("cuda", "cpu")  # one kernel for all parameters
    if t.optimizer == "adamw":
        groups = param_groups(model.parameters(), t.weight_decay)
        optimizers: list[Optimizer] = [
            torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), fused=fused)
        ]
    else:
        trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        hidden = [p for n, p in trained if n.startswith("blocks.") and p.dim() == 2]
        hidden_ids = {id(p) for p in hidden}
        rest = [p for _, p in trained if id(p) not in hidden_ids]
        optimizers = [
            BatchedMuon(
                hidden,
                ns_dtype=ns_dtype_for(device),
                lr=t.muon_lr,
                weight_decay=t.weight_decay,
            ),
            torch.optim.AdamW(
                param_groups(rest, t.weight_decay), lr=t.lr, betas=(t.beta1, t.beta2), fused=fused
            ),
        ]
    for opt in optimizers:
        for group in opt.param_groups:
            group["base_lr"] = group["lr"]
    return optimizers


def set_lr(optimizers: list[Optimizer], factor: float) -> None:
    """Every group's lr = its base_lr x the schedule's factor for this step."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * factor
