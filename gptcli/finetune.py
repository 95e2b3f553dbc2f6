"""Finetuning: start from a trained checkpoint and train on task data through the same trainer.

`task: lm` continues next-token training on new text with the checkpoint's own tokenizer and
model shape, in a new run folder, so the pretrained run is never modified.
"""

from __future__ import annotations

import dataclasses

from gptcli import checkpoint, console, data, train
from gptcli import recipe as recipe_mod
from gptcli.console import UserError
from gptcli.recipe import Recipe


def finetune(recipe: Recipe, fresh: bool = False) -> dict:
    if not recipe.init:
        raise UserError(
            "finetune needs `init:` in the recipe: the checkpoint or run folder to start from "
            "(e.g. --set init=runs/tiny)"
        )
    loaded = checkpoint.load(recipe.init)
    console.info(f"finetune: starting from {loaded.path} (step {loaded.state.get('step', '?')})")
    if recipe.model != recipe_mod.ModelConfig():
        console.warn(
            "finetune uses the init checkpoint's model shape; the model: section is ignored"
        )
    # The run records the model it actually trains: the checkpoint's.
    cfg = loaded.config
    recipe = dataclasses.replace(recipe, model=dataclasses.replace(cfg, vocab_size=0))
    run_dir = recipe_mod.run_dir(recipe)
    if run_dir.resolve() == loaded.path.parent.parent.resolve():
        raise UserError(f"the finetune run folder {run_dir} is the init run's folder; change name:")
    if fresh:
        run_dir = train.new_run_dir(run_dir)
    init_tokenizer = loaded.path / "tokenizer.json"
    with checkpoint.RunLock(run_dir):
        train.check_resumable(recipe, run_dir, cfg, init_tokenizer)
        manifest = data.prepare(recipe, run_dir, given_tokenizer=init_tokenizer)
        data.write_atomic(run_dir / "recipe.yaml", recipe_mod.dump(recipe).encode())
        return train.fit(recipe, run_dir, cfg, manifest, init_weights=loaded.weights)
