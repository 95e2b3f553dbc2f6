"""Shared by the quality benchmarks: train a recipe for a fixed wall-clock budget.

A short probe measures this machine's steps per second for the recipe, then the real run gets
max_steps = budget x rate, so its learning-rate schedule completes inside the budget.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from gptcli import console, train
from gptcli import recipe as recipe_mod

PROBE_STEPS = 15


def train_for(recipe_path: str | Path | None, seconds: float, overrides: list[str]) -> dict:
    """Pretrain in a temporary folder for about `seconds` of training; returns the summary."""
    console.set_quiet(True)
    with tempfile.TemporaryDirectory(prefix="gptcli-bench-") as tmp:
        base = [*overrides, "train.eval_every=0", "train.save_every=0", "train.log_every=50"]

        def load(extra: list[str]) -> recipe_mod.Recipe:
            sets = [*base, *extra]
            if recipe_path is None:
                return recipe_mod.from_dict({}, sets)
            return recipe_mod.load(recipe_path, sets)

        probe = train.pretrain(
            load([f"run_dir={tmp}/probe", f"train.max_steps={PROBE_STEPS}", "train.warmup_steps=1"])
        )
        rate = PROBE_STEPS / max(probe["elapsed_s"], 1e-6)
        steps = max(PROBE_STEPS, int(seconds * rate))
        summary = train.pretrain(load([f"run_dir={tmp}/run", f"train.max_steps={steps}"]))
    return {**summary, "planned_steps": steps}
