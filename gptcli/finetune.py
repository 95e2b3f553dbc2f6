"""`gptcli finetune`: start from a trained checkpoint and train on task data.

The task (tasks/: lm, sft, classify) says what is learned; this module turns init's weights
and tokenizer into the model the task trains (tokens added, embeddings grown, a classifier
head, LoRA adapters) and hands it to the same Trainer as `pretrain`. Every run goes into its
own run folder, so the pretrained run is never modified.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from gptcli import checkpoint, console, load, loggers, lora, parallel, run, tokenizer
from gptcli.checkpoint import weights_file
from gptcli.checkpoint_tensors import Loaded, load_weights
from gptcli.console import UserError
from gptcli.data import corpus, curate, tokenize
from gptcli.data.manifest import read_manifest
from gptcli.device import Dist, init_distributed, pick_device
from gptcli.files import sha256_file
from gptcli.model import GPT
from gptcli.recipe import NON_SHAPE_KEYS, ModelConfig, Recipe
from gptcli.tasks.base import Task, add_special_tokens
from gptcli.tasks.classify import CLASSIFY_TOKENS, ClassifyTask
from gptcli.tasks.lm import LMTask
from gptcli.tasks.sft import CHAT_TOKENS, SFTTask
from gptcli.trainer import Trainer, build_model, check_resumable


def grow_embeddings(
    weights: dict[str, torch.Tensor], vocab_size: int, new_ids: list[int], old_vocab: int
) -> dict[str, torch.Tensor]:
    """Rows for added tokens start at the mean embedding of the existing ones, so a new token
    looks like an average token rather than noise; the matrices grow when needed."""
    out = dict(weights)
    for name in ("wte.weight", "lm_head.weight"):
        w = out.get(name)
        if w is None:
            continue
        mean = w[: min(old_vocab, w.shape[0])].float().mean(0).to(w.dtype)
        if w.shape[0] < vocab_size:
            w = torch.cat([w, mean.expand(vocab_size - w.shape[0], -1)])
        else:
            w = w.clone()
        for i in new_ids:
            w[i] = mean
        out[name] = w
    return out


def model_from_init(recipe: Recipe, init: ModelConfig, init_path: Path) -> ModelConfig:
    """The init checkpoint's model with the recipe's training-only model keys (dropout)
    applied; a shape key the recipe gives must agree with the checkpoint, which it cannot change.
    """
    cfg = init
    for key in sorted(k.removeprefix("model.") for k in recipe.given if k.startswith("model.")):
        wanted, have = getattr(recipe.model, key), getattr(init, key)
        if key == "preset" or (key == "vocab_size" and wanted == 0) or wanted == have:
            continue  # a preset is the switches it fills; vocab_size 0 means "the tokenizer's"
        if key in NON_SHAPE_KEYS:
            console.info(f"finetune: model.{key} {have!r} -> {wanted!r} (from the recipe)")
            cfg = dataclasses.replace(cfg, **{key: wanted})
        else:
            raise UserError(
                f"model.{key} is {wanted!r} in the recipe but {have!r} in init {init_path}: "
                "a finetune keeps the checkpoint's shape (remove the key from the recipe)"
            )
    return cfg


def check_run_tokenizer(run_dir: Path, tok) -> None:
    """Resuming a task run needs the same tokenizer its checkpoints were trained with."""
    existing = run_dir / tokenizer.TOKENIZER_FILE
    if checkpoint.newest_in_run(run_dir) is None or not existing.is_file():
        return
    if tokenizer.load(existing).get_vocab() != tok.get_vocab():
        raise UserError(
            f"cannot resume {run_dir}: it was trained from a checkpoint with a different "
            "tokenizer than init's (use --fresh for a new run folder)"
        )


def lm_task(recipe: Recipe, run_dir: Path, loaded: Loaded, cfg: ModelConfig, dist: Dist):
    """task: lm: the new text encoded with init's tokenizer into this run's shards."""
    init_tokenizer = loaded.path / tokenizer.TOKENIZER_FILE
    if dist.main:
        check_resumable(recipe, run_dir, cfg, init_tokenizer)
        tokenize.prepare(recipe, run_dir, given_tokenizer=init_tokenizer)
    parallel.barrier(dist)
    manifest = read_manifest(run_dir)
    task = LMTask(run_dir, manifest, cfg.block_size, recipe.train, recipe.seed)
    return task, cfg, loaded.weights, []


def task_records(recipe: Recipe, run_dir: Path) -> tuple[list, list | None]:
    """The examples of data.source (each of its sources in turn) and of data.dev (None when
    unset), read through the data layer like a pretraining corpus; with data.dedup: exact or
    data.decontaminate, less the training examples those remove (never a dev example)."""
    cfg = recipe.data
    seed = recipe.seed
    labelled = [
        (src.path, r) for src in cfg.sources() for r in corpus.records(src, cfg, run_dir, seed)
    ]
    dev_src = cfg.dev_source()
    dev = corpus.records(dev_src, cfg, run_dir, seed) if dev_src else None
    data_dir = run_dir / "data"
    if not cfg.curated():
        (data_dir / curate.REMOVED_FILE).unlink(missing_ok=True)  # of an earlier, curated run
        return [r for _, r in labelled], dev
    train, curator = curate.task_examples(cfg, labelled, dev)
    removed = curator.removed()
    for source, by in removed.items():
        why = ", ".join(f"{v['documents']:,} {reason}" for reason, v in by.items())
        console.info(
            f"finetune: {source}: {sum(v['documents'] for v in by.values()):,} "
            f"training examples removed ({why})"
        )
    if not train:
        raise curator.empty_error(f"data.source {cfg.source!r}")
    data_dir.mkdir(parents=True, exist_ok=True)
    curate.write_removed(data_dir, removed, curator.examples)
    return train, dev


def token_task(recipe: Recipe, run_dir: Path, loaded: Loaded, cfg: ModelConfig, dist: Dist):
    """task: sft or classify: their special tokens added to init's tokenizer, the embedding
    matrices grown to match, and for classify a head of as many classes as labels."""
    tok = tokenizer.load(loaded.path / tokenizer.TOKENIZER_FILE)
    old_vocab = tok.get_vocab_size()
    classify = recipe.task.kind == "classify"
    new_ids = add_special_tokens(tok, CLASSIFY_TOKENS if classify else CHAT_TOKENS)
    if dist.main:
        check_run_tokenizer(run_dir, tok)
    train, dev = task_records(recipe, run_dir)
    task: Task
    if classify:
        task = ClassifyTask.for_training(recipe, tok, cfg.block_size, train, dev)
    else:
        task = SFTTask(recipe, tok, cfg.block_size, train, dev)
    vocab = max(cfg.vocab_size, tok.get_vocab_size())
    n_classes = task.n_classes if isinstance(task, ClassifyTask) else 0
    cfg = dataclasses.replace(cfg, vocab_size=vocab, n_classes=n_classes)
    if dist.main:
        check_resumable(recipe, run_dir, cfg)
        run_dir.mkdir(parents=True, exist_ok=True)
        tokenizer.save(tok, run_dir / tokenizer.TOKENIZER_FILE)
    return task, cfg, grow_embeddings(loaded.weights, vocab, new_ids, old_vocab), new_ids


def add_lora(model: GPT, recipe: Recipe, task: Task, loaded: Loaded, new_ids: list[int]) -> None:
    """Adapters on the target layers; the checkpoints then store only what trains, with a
    reference (path and sha256) to the base weights."""
    cfg = recipe.finetune.lora
    if not lora.apply(model, cfg):
        raise UserError(f"finetune.lora.targets {cfg.targets} match no layer of this model")
    base_vocab = min(loaded.config.vocab_size, min(new_ids, default=loaded.config.vocab_size))
    base = {
        "path": str(loaded.path.resolve()),
        "sha256": sha256_file(loaded.path / "model.safetensors"),
    }
    task.checkpoint_info = {
        **task.checkpoint_info,
        "lora": {**dataclasses.asdict(cfg), "base": base, "base_vocab": base_vocab},
    }


def finetune(recipe: Recipe, fresh: bool = False) -> dict | None:
    """Train init's model on the recipe's task. Under torchrun (as pretrain), rank 0 prepares
    the run folder while the others wait; rank 0 alone returns the summary."""
    if not recipe.init:
        raise UserError(
            "finetune needs `init:` in the recipe: the checkpoint or run folder to start from "
            "(e.g. --set init=runs/tiny)"
        )
    pick_device(recipe.train.device)  # an unavailable device is refused before any work
    loggers.check_installed(recipe)
    dist = init_distributed(recipe.train.device)
    if not dist.main:
        console.set_quiet(True)
    loaded = load.load(recipe.init)
    if loaded.info["task"].get("kind") == "classify":
        raise UserError(
            f"{loaded.path} is a classifier; finetune from a language-model checkpoint "
            "(its pretraining run)"
        )
    cfg = model_from_init(recipe, loaded.config, loaded.path)
    console.info(f"finetune: starting from {loaded.path} (step {loaded.state.get('step', '?')})")
    # The run records the model it actually trains: the checkpoint's.
    recipe = dataclasses.replace(recipe, model=dataclasses.replace(cfg, vocab_size=0))
    if run.folder(recipe).resolve() == loaded.path.parent.parent.resolve():
        raise UserError(
            f"the finetune run folder {run.folder(recipe)} is the init run's folder; change name:"
        )
    run_dir, lock = run.open_run(recipe, fresh, dist)
    with lock:
        prepare = lm_task if recipe.task.kind == "lm" else token_task
        task, cfg, weights, new_ids = prepare(recipe, run_dir, loaded, cfg, dist)
        if dist.main:
            run.record_recipe(run_dir, recipe, run.trains(run_dir, recipe))
        parallel.barrier(dist)
        frozen = recipe.finetune.lora.rank > 0
        model = build_model(cfg, recipe.train, dist, recipe.seed, frozen)
        head = {"cls_head.weight", "cls_head.bias"}  # a new classifier head starts fresh
        load_weights(model, weights, weights_file(loaded.path), head)
        if recipe.finetune.lora.rank:
            add_lora(model, recipe, task, loaded, new_ids)
        no_lm_loss = recipe.task.kind == "classify" and recipe.task.lm_weight == 0
        if no_lm_loss and model.lm_head.weight is not model.wte.weight:
            # an untied unembedding then gets no gradient; frozen, DDP does not wait for it
            model.lm_head.weight.requires_grad_(False)
        summary = Trainer(recipe, run_dir, model, task, dist, read_base=load.load).fit()
        parallel.barrier(dist)
        return summary if dist.main else None
