"""`gptcli tokenize RECIPE` and `gptcli pretrain RECIPE`: a run folder's data, then its model.

Both take the run lock. Under torchrun, rank 0 prepares the run folder while holding the lock
and the other ranks wait for it; rank 0 alone returns the summary, so a job prints one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from gptcli import checkpoint, console, loggers, parallel, run
from gptcli.console import UserError
from gptcli.data.manifest import read_manifest
from gptcli.data.tokenize import is_up_to_date, prepare
from gptcli.device import init_distributed, pick_device
from gptcli.recipe import Recipe
from gptcli.tasks.lm import LMTask
from gptcli.trainer import Trainer, build_model, check_resumable


def tokenize(recipe: Recipe) -> tuple[Path, dict]:
    """Prepare the run folder's tokenizer and shards. Shards under existing checkpoints are
    not rebuilt: the checkpoints were trained on them."""
    run_dir = run.folder(recipe)
    with run.RunLock(run_dir):
        if checkpoint.newest_in_run(run_dir) and not is_up_to_date(recipe, run_dir):
            raise UserError(
                f"{run_dir} has checkpoints trained on other data or tokenizer settings; "
                "set another name: (or run_dir:) for the new data"
            )
        manifest, tokenized = prepare(recipe, run_dir)
        run.record_recipe(run_dir, recipe, working=tokenized)
    return run_dir, manifest


def pretrain(recipe: Recipe, fresh: bool = False) -> dict | None:
    """Tokenize if needed, then train from scratch or resume the run's newest checkpoint."""
    pick_device(recipe.train.device)  # an unavailable device is refused before any work
    loggers.check_installed(recipe)
    dist = init_distributed(recipe.train.device)
    if not dist.main:
        console.set_quiet(True)
    run_dir, lock = run.open_run(recipe, fresh, dist)
    with lock:
        if dist.main:
            check_resumable(recipe, run_dir, None)
            _, tokenized = prepare(recipe, run_dir)
            run.record_recipe(run_dir, recipe, tokenized or run.trains(run_dir, recipe))
        parallel.barrier(dist)
        manifest = read_manifest(run_dir)
        vocab = manifest["vocab_size"]
        if recipe.model.vocab_size and recipe.model.vocab_size < vocab:
            raise UserError(
                f"model.vocab_size {recipe.model.vocab_size} is smaller than the tokenizer's "
                f"{vocab} tokens (use 0 to take the tokenizer's size)"
            )
        cfg = dataclasses.replace(recipe.model, vocab_size=recipe.model.vocab_size or vocab)
        model = build_model(cfg, recipe.train, dist, recipe.seed)
        task = LMTask(run_dir, manifest, cfg.block_size, recipe.train, recipe.seed)
        summary = Trainer(recipe, run_dir, model, task, dist).fit()
        parallel.barrier(dist)
        return summary if dist.main else None
