"""Shared by the quality benchmarks: train a recipe for a fixed wall-clock budget.

A short probe measures this machine's steady-state steps per second for the recipe (its last
logged window, after warm-up) and what its first step costs beyond that, then the real run gets
max_steps = (budget - first step) x rate, so its learning-rate schedule completes inside the
budget. With torch.compile a second probe runs first: the real run then compiles from
inductor's on-disk cache (a few seconds), as every run after the first on a machine does; with
cold=True it does not, and the budget pays the first probe's compile (on an empty cache, a
first-ever run's). train_steps trains a recipe's own max_steps instead, whatever they take.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from gptcli import console, pretrain
from gptcli import recipe as recipe_mod

PROBE_STEPS = 30


def _loader(recipe_path: str | Path | None, base: list[str]):
    """A recipe loader: the recipe (or the defaults) with base's and then extra's overrides."""

    def load(extra: list[str]) -> recipe_mod.Recipe:
        sets = [*base, *extra]
        if recipe_path is None:
            return recipe_mod.from_dict({}, sets)
        return recipe_mod.load(recipe_path, sets)

    return load


def train_for(
    recipe_path: str | Path | None, seconds: float, overrides: list[str], cold: bool = False
) -> dict:
    """Pretrain in a temporary folder for about `seconds` of training; returns the summary.

    cold: the budget pays the first step as the probe found it (a first-ever compile when
    inductor's cache is empty), not as a second, warm probe finds it."""
    console.set_quiet(True)
    with tempfile.TemporaryDirectory(prefix="gptcli-bench-") as tmp:
        base = [*overrides, "train.eval_every=0", "train.save_every=0", "train.log_every=10"]
        load = _loader(recipe_path, base)

        def probe(name: str) -> tuple[float, float]:
            """Steady steps/s, and what the first step costs beyond a steady one (compiling)."""
            r = load(
                [f"run_dir={tmp}/{name}", f"train.max_steps={PROBE_STEPS}", "train.warmup_steps=1"]
            )
            run_dir = Path(pretrain.pretrain(r)["run_dir"])
            records = [
                json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()
            ]
            t = r.train
            # the best window after the first: on a cold cache inductor's compile workers keep
            # the cores busy for a while after the first step, which is not the steady rate
            best = max(rec["tokens_per_s"] for rec in records[1:])
            rate = best / (t.batch_size * t.grad_accum * r.model.block_size)
            return rate, max(records[0]["elapsed_s"] - 1 / rate, 0.0)

        rate, first_step = probe("probe")
        mode = load([]).train.compile
        compiles = mode == "on" or (mode == "auto" and torch.cuda.is_available())
        if compiles and not cold:  # again, so that the real run finds the compiled graphs ready
            rate, first_step = probe("probe-warm")
        steps = max(PROBE_STEPS, int((seconds - first_step) * rate))
        summary = pretrain.pretrain(load([f"run_dir={tmp}/run", f"train.max_steps={steps}"]))
    return {**summary, "planned_steps": steps, "first_step_s": round(first_step, 1)}


def train_steps(recipe_path: str | Path | None, overrides: list[str]) -> dict:
    """Pretrain in a temporary folder for the recipe's own max_steps; returns the summary."""
    console.set_quiet(True)
    with tempfile.TemporaryDirectory(prefix="gptcli-bench-") as tmp:
        base = [*overrides, "train.eval_every=0", "train.save_every=0", "train.log_every=10"]
        recipe = _loader(recipe_path, base)([f"run_dir={tmp}/run"])
        summary = pretrain.pretrain(recipe)
    return {**summary, "planned_steps": recipe.train.max_steps}
