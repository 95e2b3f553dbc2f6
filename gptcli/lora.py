"""LoRA (Hu et al., 2021): train a low-rank update B·A beside frozen linear weights.

A LoRA checkpoint stores only what was trained (the A and B matrices, the task head and any
embedding rows for added special tokens) plus a reference to its base checkpoint: the base's
path and the sha256 of its weights, checked on every load. Readers get the merged weights
W + (alpha / rank)·B·A, so sampling, export and inspect treat it as any other checkpoint.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gptcli.recipe import LoraConfig

SUFFIXES = (".lora_A", ".lora_B")


class LoRALinear(nn.Linear):
    """A linear layer whose weight (and bias) are frozen and which adds a trained B·A update.

    It keeps the wrapped layer's parameter names (weight, bias), so the base weights load into
    it unchanged and the adapters sit beside them as lora_A and lora_B.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # B = 0: training starts at W
        self.scale = alpha / rank
        self.lora_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)
        return F.linear(x, self.weight, self.bias) + self.scale * update


def apply(model: nn.Module, cfg: LoraConfig) -> list[str]:
    """Freeze the model, put adapters on the target linears of every block and unfreeze the
    task head. Returns the adapted layers' names."""
    for p in model.parameters():
        p.requires_grad_(False)
    adapted = []
    for name, module in list(model.named_modules()):
        if not name.startswith("blocks."):
            continue
        for child_name, child in list(module.named_children()):
            if child_name in cfg.targets and isinstance(child, nn.Linear):
                setattr(module, child_name, LoRALinear(child, cfg.rank, cfg.alpha, cfg.dropout))
                adapted.append(f"{name}.{child_name}")
    head = getattr(model, "cls_head", None)
    if head is not None:
        for p in head.parameters():
            p.requires_grad_(True)
    return adapted


def is_adapter_key(name: str) -> bool:
    return name.endswith(SUFFIXES)


def merge(weights: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """Fold every lora_A/lora_B pair into its weight: W + scale·B·A (computed in fp32)."""
    merged = {k: v for k, v in weights.items() if not is_adapter_key(k)}
    for name in weights:
        if name.endswith(".lora_A"):
            layer = name.removesuffix(".lora_A")
            a, b = weights[name].float(), weights[f"{layer}.lora_B"].float()
            w = merged[f"{layer}.weight"]
            merged[f"{layer}.weight"] = (w.float() + scale * (b @ a)).to(w.dtype)
    return merged
