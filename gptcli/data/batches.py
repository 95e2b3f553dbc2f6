"""Training batches: windows of a token shard chosen by (seed, index) alone."""

from __future__ import annotations

import math

import numpy as np

from gptcli.console import UserError


class Batches:
    """Windows of block_size + 1 tokens in shuffled epochs, chosen by (seed, index) alone.

    Because a batch depends only on its index, a resumed run sees exactly the batches the
    uninterrupted run would have seen, with no sampler state to save.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int) -> None:
        if len(tokens) <= block_size + 1:
            raise UserError(
                f"the training split has {len(tokens)} tokens, fewer than block_size + 2 "
                f"({block_size + 2}); use more text or a smaller model.block_size"
            )
        self.tokens = tokens
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed
        # windows of block_size + 1 tokens that fit at any offset below block_size
        self.windows_per_epoch = max(1, (len(tokens) - 1 - block_size) // block_size)
        self.batches_per_epoch = max(1, self.windows_per_epoch // batch_size)
        self._epoch: tuple | None = None  # (epoch, offset, window order): derived, a cache

    def get(self, index: int) -> tuple:
        """Batch `index`: epochs of non-overlapping windows in a shuffled order, so every token
        is trained on once per epoch; each epoch shifts the window grid by a random offset."""
        import torch

        epoch, k = divmod(index, self.batches_per_epoch)
        if self._epoch is None or self._epoch[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            offset = int(torch.randint(self.block_size, (1,), generator=g))
            order = torch.randperm(self.windows_per_epoch, generator=g)
            self._epoch = (epoch, offset, order)
        _, offset, order = self._epoch
        rows = torch.arange(k * self.batch_size, (k + 1) * self.batch_size)
        picked = order[rows % self.windows_per_epoch]  # wraps only when a split is tiny
        return self._windows((offset + picked * self.block_size).tolist())

    def _windows(self, starts: list[int]) -> tuple:
        import torch

        rows = np.stack([self.tokens[s : s + self.block_size + 1] for s in starts]).astype(np.int64)
        data = torch.from_numpy(rows)
        return data[:, :-1], data[:, 1:]

    def eval_batches(self, n_batches: int) -> list[tuple]:
        """Fixed, evenly spaced windows, so every evaluation measures the same tokens."""
        span = max(len(self.tokens) - self.block_size - 1, 1)
        n = min(n_batches * self.batch_size, max(1, span // self.block_size))
        starts = [math.floor(i * span / n) for i in range(n)]
        return [
            self._windows(starts[i : i + self.batch_size])
            for i in range(0, len(starts), self.batch_size)
        ]
