"""Next-token prediction on a run's token shards: `pretrain`, and `finetune` with task: lm."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from gptcli.console import UserError
from gptcli.data import batches, shards
from gptcli.model import GPT
from gptcli.recipe import TrainConfig
from gptcli.tasks.base import evaluate_loss


def bits_per_byte(loss: float, tokens: int, n_bytes: int) -> float:
    """Nats per token, over text of n_bytes UTF-8 bytes cut into tokens, to bits per byte:
    comparable across tokenizers."""
    return loss / math.log(2) * tokens / max(n_bytes, 1)


class LMTask:
    """Batches are windows of the train shard by step index; evaluation is the val shard."""

    checkpoint_info: dict = {"task": "lm"}

    def __init__(self, run_dir: Path, manifest: dict, block_size: int, t: TrainConfig, seed: int):
        self.manifest = manifest
        self.train = batches.Batches(
            shards.load_shard(run_dir, "train", manifest), block_size, t.batch_size, seed
        )
        val_tokens = shards.load_shard(run_dir, "val", manifest)
        if len(val_tokens) < 3:
            raise UserError("the validation split has fewer than 3 tokens; raise data.val_fraction")
        val_block = min(block_size, len(val_tokens) - 2)
        self.val = batches.Batches(val_tokens, val_block, t.batch_size, seed).eval_batches(
            t.eval_batches
        )

    def batch(self, index: int) -> tuple[torch.Tensor, ...]:
        return self.train.get(index)

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return model(*batch)[1]

    def evaluate(self, model: GPT, device: torch.device, amp: torch.dtype | None) -> dict:
        val_loss = evaluate_loss(model, self.val, device, amp)
        val = self.manifest["val"]
        return {
            "val_loss": round(val_loss, 5),
            "val_bpb": round(bits_per_byte(val_loss, val["tokens"], val["bytes"]), 5),
        }

    def summary(self, last: dict) -> tuple[dict, str]:
        """Extra summary keys and the closing line."""
        unigram = round(self.manifest["val_unigram_bpb"], 5)
        extra = {"val_bpb": last.get("val_bpb"), "unigram_bpb": unigram}
        if last.get("val_bpb") is None:
            return extra, ""
        return extra, (
            f"done: val loss {last['val_loss']:.4f} = {last['val_bpb']:.3f} bits/byte; "
            f"unigram baseline {unigram:.3f} bits/byte (ratio {last['val_bpb'] / unigram:.2f})"
        )
