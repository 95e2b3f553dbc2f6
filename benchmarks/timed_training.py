"""Shared by the quality benchmarks: train a recipe for a fixed wall-clock budget.

A short probe measures this machine's steady-state steps per second for the recipe (its last
logged window, after warm-up), then the real run gets max_steps = budget x rate, so its
learning-rate schedule completes inside the budget.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from gptcli import console, train
from gptcli import recipe as recipe_mod

PROBE_STEPS = 30


def train_for(recipe_path: str | Path | None, seconds: float, overrides: list[str]) -> dict:
    """Pretrain in a temporary folder for about `seconds` of training; returns the summary."""
    console.set_quiet(True)
    with tempfile.TemporaryDirectory(prefix="gptcli-bench-") as tmp:
        base = [*overrides, "train.eval_every=0", "train.save_every=0", "train.log_every=10"]

        def load(extra: list[str]) -> recipe_mod.Recipe:
            sets = [*base, *extra]
            if recipe_path is None:
                return recipe_mod.from_dict({}, sets)
            return recipe_mod.load(recipe_path, sets)

        probe_recipe = load(
            [f"run_dir={tmp}/probe", f"train.max_steps={PROBE_STEPS}", "train.warmup_steps=1"]
        )
        probe = train.pretrain(probe_recipe)
        last = json.loads(Path(probe["run_dir"], "metrics.jsonl").read_text().splitlines()[-1])
        t = probe_recipe.train
        tokens_per_step = t.batch_size * t.grad_accum * probe_recipe.model.block_size
        rate = last["tokens_per_s"] / tokens_per_step
        steps = max(PROBE_STEPS, int(seconds * rate))
        summary = train.pretrain(load([f"run_dir={tmp}/run", f"train.max_steps={steps}"]))
    return {**summary, "planned_steps": steps}
