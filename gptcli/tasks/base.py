"""What the tasks share: examples' fields, their order and padding, and a loss evaluation.

A task gives the trainer batches by step index, a loss, an evaluation and a summary; the
trainer knows nothing of what is learned. lm.py trains on token shards (pretrain, finetune
task: lm), sft.py on chat-formatted conversations, classify.py a GPT-1 classifier head.
"""

from __future__ import annotations

import random
from typing import Any, Protocol

import torch

from gptcli import tokenizer
from gptcli.console import UserError
from gptcli.device import autocast
from gptcli.files import get_field
from gptcli.model import GPT
from gptcli.recipe import Recipe


class Task(Protocol):
    """What the trainer asks of a task (LMTask, SFTTask, ClassifyTask): nothing else of it."""

    # what the task's checkpoints record in config.json ("task": its kind; finetune adds "lora")
    checkpoint_info: dict

    def batch(self, index: int) -> tuple[torch.Tensor, ...]:
        """The training batch of step index (the same batch for the same seed and index)."""

    def loss(self, model: GPT, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The loss to minimise on one batch."""

    def evaluate(self, model: GPT, device: torch.device, amp: torch.dtype | None) -> dict:
        """Metrics on held-out data (val_loss and the task's own), rounded for the log."""

    def summary(self, last: dict) -> tuple[dict, str]:
        """Extra keys for the run's summary and its closing line, from the last evaluation."""


def required_field(record: dict, field: str, where: str) -> Any:
    """A (dotted) field of an example, or exit 2 naming the fields that are there."""
    value = get_field(record, field)
    if value is None:
        found = ", ".join(sorted(record)) or "none"
        raise UserError(
            f"{where}: missing field {field!r} (fields found: {found}; set task.fields)"
        )
    return value


def as_text(value: Any, field: str, where: str) -> str:
    """A field's value, which must be a string."""
    if not isinstance(value, str):
        raise UserError(f"{where}: field {field!r} must be a string, got {type(value).__name__}")
    return tokenizer.check_text(value, where)  # a JSON \udcff escape is no character


def text_field(record: dict, field: str, where: str) -> str:
    return as_text(required_field(record, field, where), field, where)


def add_special_tokens(tok, tokens: list[str]) -> list[int]:
    """Add the tokens the task needs (when missing); returns the ids of those added."""
    missing = [t for t in tokens if tok.token_to_id(t) is None]
    if missing:
        tok.add_special_tokens(missing)
    return [tok.token_to_id(t) for t in missing]


class LengthOrder:
    """Which examples make batch i: a fresh seeded permutation each epoch, cut into chunks of
    `bucket` batches whose examples are sorted by length (so a batch pads little) and whose
    batches are then shuffled. Batch i depends only on (seed, i), so a resumed run sees exactly
    the batches the uninterrupted one would have."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, bucket: int = 32) -> None:
        self.lengths, self.batch_size, self.seed = lengths, batch_size, seed
        self.bucket = bucket
        self._chunk, self._batches = -1, []

    def _permutation(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.lengths), generator=g).tolist()

    def indices(self, index: int) -> list[int]:
        chunk, slot = divmod(index, self.bucket)
        if chunk != self._chunk:
            n, size = len(self.lengths), self.bucket * self.batch_size
            perms: dict[int, list[int]] = {}
            examples = []
            for pos in range(chunk * size, (chunk + 1) * size):
                epoch, offset = divmod(pos, n)
                if epoch not in perms:
                    perms[epoch] = self._permutation(epoch)
                examples.append(perms[epoch][offset])
            examples.sort(key=lambda i: self.lengths[i])
            b = self.batch_size
            batches = [examples[j * b : (j + 1) * b] for j in range(self.bucket)]
            random.Random(self.seed * 7919 + chunk).shuffle(batches)
            self._chunk, self._batches = chunk, batches
        return self._batches[slot]


def pad(rows: list[list[int]], targets: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded inputs and targets (-1 = no loss). Causal attention never looks right, so
    padding needs no mask and rows never see each other."""
    width = max(len(r) for r in rows)
    x = torch.zeros(len(rows), width, dtype=torch.long)
    y = torch.full((len(rows), width), -1, dtype=torch.long)
    for i, (r, t) in enumerate(zip(rows, targets, strict=False)):
        x[i, : len(r)] = torch.tensor(r)
        y[i, : len(t)] = torch.tensor(t)
    return x, y


def split_dev(items: list, recipe: Recipe) -> tuple[list, list]:
    """Without data.dev, a seeded val_fraction of the training examples is held out."""
    order = list(range(len(items)))
    random.Random(recipe.seed + 1).shuffle(order)
    n_dev = max(1, round(len(items) * recipe.data.val_fraction))
    if len(items) - n_dev < 1:
        raise UserError(f"{recipe.data.source}: too few examples to hold out a dev split")
    dev = set(order[:n_dev])
    return [x for i, x in enumerate(items) if i not in dev], [items[i] for i in sorted(dev)]


@torch.no_grad()
def evaluate_loss(model, batches: list[tuple], device: torch.device, amp) -> float:
    """Mean loss per target token over the batches (targets of -1 carry no loss: padding, or
    the prompt tokens of SFT examples)."""
    model.eval()
    total, count = 0.0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with autocast(device, amp):
            _, loss = model(x, y)
        n = (y != -1).sum().item()
        total += loss.item() * n
        count += n
    model.train()
    return total / max(count, 1)
