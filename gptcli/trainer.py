"""The one training loop, shared by `pretrain` and `finetune`.

A Trainer owns the optimizers, the schedule, evaluation, metrics, checkpoints and resuming;
the task (tasks/) says what is learned. Batches depend only on (seed, step), and optimizer and
RNG states are saved with every checkpoint, so a resumed run continues exactly where the
interrupted one stopped.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from pathlib import Path
from typing import Any

import torch

from gptcli import checkpoint, console, data, interop, loggers, optim, parallel, run
from gptcli.console import Interrupted, UserError
from gptcli.device import (
    Dist,
    autocast,
    autocast_dtype,
    keep_freed_memory,
    peak_flops,
    pick_device,
    why_no_compile,
)
from gptcli.files import sha256_file
from gptcli.model import GPT
from gptcli.recipe import ModelConfig, Recipe, TrainConfig, shape_change
from gptcli.tokenizer import TOKENIZER_FILE


class TaskStep(torch.nn.Module):
    """The task's loss as one module call, which DDP and torch.compile then wrap whole: a
    classifier's loss reads model.hidden and its head, which model.forward never runs."""

    def __init__(self, model: GPT, task: Any) -> None:
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, *batch: torch.Tensor) -> torch.Tensor:
        return self.task.loss(self.model, batch)


class SignalFlag:
    """SIGINT/SIGTERM set a flag the loop checks after each step, so it can save and exit."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> SignalFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def check_resumable(
    recipe: Recipe, run_dir: Path, cfg: ModelConfig | None, given_tokenizer: Path | None = None
) -> None:
    """Before anything is written: a run with checkpoints continues only with the same model,
    corpus and tokenizer. cfg None compares the recipe's model (its vocab_size from the run)."""
    ckpt = checkpoint.newest_in_run(run_dir)
    if ckpt is None:
        return
    if recipe.task.kind != "lm":
        given_tokenizer = None  # sft/classify: the run's own tokenizer (special tokens added)
    old = checkpoint.model_config_from_json(ckpt / "config.json")
    if cfg is None:
        cfg = dataclasses.replace(
            recipe.model, vocab_size=recipe.model.vocab_size or old.vocab_size
        )
    change = shape_change(old, cfg)
    old_optimizer = checkpoint.read_state(ckpt).get("train", {}).get("optimizer", "adamw")
    if old_optimizer != recipe.train.optimizer:
        change = f"train.optimizer was {old_optimizer!r}, now {recipe.train.optimizer!r}"
    if change:
        raise UserError(f"cannot resume {run_dir}: {change} (use --fresh for a new run folder)")
    if recipe.task.kind == "lm" and not data.is_up_to_date(recipe, run_dir, given_tokenizer):
        raise UserError(
            f"cannot resume {run_dir}: the corpus or tokenizer settings changed since it was "
            "trained (use --fresh for a new run folder)"
        )


def training_device(t: TrainConfig, dist: Dist) -> torch.device:
    """The device this rank trains on, with the settings that make it fast."""
    device = pick_device(t.device)
    if device.type == "cuda" and dist.world > 1:
        device = torch.device("cuda", dist.local_rank)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    elif device.type == "cpu":
        keep_freed_memory()
    return device


def resume(run_dir: Path, model: GPT, optimizers: list, t: TrainConfig) -> tuple[int, int, float]:
    """Load the run's newest checkpoint into model and optimizers; (step, tokens, elapsed)."""
    resume_from = checkpoint.newest_in_run(run_dir)
    if resume_from is None:
        return 0, 0, 0.0
    change = shape_change(checkpoint.model_config_from_json(resume_from / "config.json"), model.cfg)
    same_tokenizer = sha256_file(resume_from / TOKENIZER_FILE) == sha256_file(
        run_dir / TOKENIZER_FILE
    )
    if change or not same_tokenizer:
        raise UserError(f"cannot resume {resume_from}: {change or 'the tokenizer changed'}")
    loaded = interop.load(resume_from, merge_lora=False)
    checkpoint.load_weights(model, loaded.weights, resume_from / "model.safetensors")
    extra = checkpoint.load_trainer_tensors(resume_from)
    groups = loaded.state.get("optimizer_param_groups")
    if groups:
        checkpoint.restore_optimizers(optimizers, extra, groups)
    checkpoint.restore_rng(extra)
    old_train = loaded.state.get("train", {})
    changed = [
        f"{k} {old_train[k]!r} -> {v!r}"
        for k, v in dataclasses.asdict(t).items()
        if k in old_train and old_train[k] != v
    ]
    step = loaded.state["step"]
    if changed:
        console.warn(
            f"resuming with changed train settings (they apply from step {step} on): "
            + ", ".join(changed)
        )
    console.info(f"train: resuming from {resume_from} (step {step})")
    loggers.truncate_metrics(run_dir, step)
    return step, loaded.state.get("tokens_seen", 0), loaded.state.get("elapsed_s", 0.0)


class Trainer:
    """Trains model on task until train.max_steps, resuming from the run's newest checkpoint.

    Under torchrun every rank runs one; each draws its own batches, rank 0 logs and saves.
    """

    def __init__(
        self, recipe: Recipe, run_dir: Path, model: GPT, task: Any, dist: Dist | None = None
    ) -> None:
        self.t, self.run_dir, self.model, self.task = recipe.train, run_dir, model, task
        self.dist = dist or Dist()
        self.device = training_device(self.t, self.dist)
        self.amp = autocast_dtype(self.device, self.t.dtype)
        if self.dist.main:
            checkpoint.clean_stale_temps(run_dir)
        model.to(self.device)
        self.optimizers = optim.build_optimizers(model, self.t, self.device)
        self.step, self.tokens_seen, self.elapsed_before = resume(
            run_dir, model, self.optimizers, self.t
        )
        self.start_step = self.step
        self.parallel = parallel.DataParallel(TaskStep(model, task), self.dist, self.device)
        self.step_model = self.compiled(self.parallel.module)
        self.peak, peak_source = peak_flops(self.device, self.amp)
        self.flops_per_token = model.flops_per_token()
        self.announce(peak_source)
        self.loggers: list = [loggers.ConsoleLogger(self.t.max_steps)]
        if self.dist.main:
            self.loggers.append(loggers.JsonlLogger(run_dir))
        self.versions = run.versions(torch.__version__)
        self.last: dict = {}
        self.eval_failure: Exception | None = None

    def compiled(self, module: torch.nn.Module) -> torch.nn.Module:
        t, device = self.t, self.device
        if t.compile == "on" or (t.compile == "auto" and device.type == "cuda"):
            reason = why_no_compile(device)
            if reason:
                console.warn(f"train.compile: {reason}; training without it")
            else:
                console.info("train: torch.compile: the first step compiles (cached for reuse)")
                return torch.compile(module)
        return module

    def announce(self, peak_source: str) -> None:
        t, dist, model = self.t, self.dist, self.model
        n_params = model.num_params()
        n_trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        trained = f" ({n_trained / 1e6:.2f}M trained)" if n_trained < n_params else ""
        precision = f"{str(self.amp).removeprefix('torch.')} autocast" if self.amp else "fp32"
        ranks = f" x {dist.world} ranks" if dist.world > 1 else ""
        mfu = f", MFU against {self.peak * dist.world / 1e12:.2f} TFLOP/s ({peak_source})"
        console.info(
            f"train: {n_params / 1e6:.2f}M parameters{trained}, {self.device.type}{ranks} "
            f"{precision}, steps {self.step}->{t.max_steps}, {self.tokens_per_step():,} "
            "tokens/step" + (mfu if self.peak else "")
        )

    def tokens_per_step(self) -> int:
        t = self.t
        return t.batch_size * t.grad_accum * self.model.cfg.block_size * self.dist.world

    # ----- one step

    def train_step(self) -> tuple[torch.Tensor, int]:
        """Forward and backward over grad_accum micro-batches, then one optimizer step.
        Returns the summed loss (on device: no sync) and the tokens trained on, all ranks."""
        t, dist, device = self.t, self.dist, self.device
        optim.set_lr(self.optimizers, optim.lr_factor(self.step, t))
        loss_sum = torch.zeros((), device=device)
        tokens = 0
        try:
            for micro in range(t.grad_accum):
                index = (self.step * t.grad_accum + micro) * dist.world + dist.rank
                batch = self.task.batch(index)
                tokens += batch[0].numel() * dist.world
                if device.type == "cuda":  # page-locked, so the copy overlaps compute
                    batch = tuple(b.pin_memory() for b in batch)
                batch = tuple(b.to(device, non_blocking=True) for b in batch)
                with self.parallel.no_sync(micro == t.grad_accum - 1):
                    with autocast(device, self.amp):
                        loss = self.step_model(*batch)
                    (loss / t.grad_accum).backward()
                loss_sum += loss.detach()
        except torch.cuda.OutOfMemoryError:
            raise UserError(
                f"CUDA out of memory at train.batch_size={t.batch_size}: lower it and "
                "raise train.grad_accum to keep the tokens per step"
            ) from None
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        for opt in self.optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += tokens
        return loss_sum, tokens

    def record(self, loss_sum: torch.Tensor, window_tokens: int, window_s: float) -> dict:
        """The metrics of the step just taken (the pinned metrics.jsonl keys)."""
        t = self.t
        loss = parallel.all_mean(loss_sum, self.dist).item() / t.grad_accum
        rate = window_tokens / max(window_s, 1e-9)
        record = {
            "step": self.step,
            "loss": round(loss, 5),
            "lr": t.lr * optim.lr_factor(self.step - 1, t),
            "tokens_per_s": round(rate, 1),
            "tokens_seen": self.tokens_seen,
            "elapsed_s": round(self.elapsed(), 3),
        }
        if self.peak:
            mfu = self.flops_per_token * rate / (self.peak * self.dist.world)
            record["mfu"] = float(f"{mfu:.3g}")
        return record

    def evaluate(self) -> dict:
        return self.task.evaluate(self.model, self.device, self.amp)

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    # ----- checkpoints

    def state(self) -> dict:
        return {
            "tokens_seen": self.tokens_seen,
            "elapsed_s": round(self.elapsed(), 3),
            "data_position": self.step * self.t.grad_accum * self.dist.world,
            "metrics": self.last,
            "train": dataclasses.asdict(self.t),
            "versions": self.versions,
        }

    def save(self) -> Path:
        path = checkpoint.save(
            self.run_dir,
            self.step,
            self.model,
            self.optimizers,
            self.state(),
            self.run_dir / TOKENIZER_FILE,
            self.task.checkpoint_info,
        )
        if self.t.keep_last:
            checkpoint.prune(self.run_dir, self.t.keep_last)
        return path

    def log(self, record: dict) -> None:
        self.last = {**self.last, **record}
        for logger in self.loggers:
            logger.log(record)

    # ----- the loop

    def fit(self) -> dict:
        """Train to max_steps; the final checkpoint carries the final evaluation."""
        t = self.t
        self.started = time.perf_counter()
        window_start, window_tokens = self.started, 0
        final: Path | None = None
        self.model.train()
        try:
            with SignalFlag() as flag, console.progress("loss", "lr", "rate") as bar:
                row = bar.add_task(
                    "train", total=t.max_steps, completed=self.step, loss="", lr="", rate=""
                )
                while self.step < t.max_steps:
                    loss_sum, tokens = self.train_step()
                    window_tokens += tokens
                    is_last = self.step == t.max_steps
                    do_eval = is_last or (t.eval_every and self.step % t.eval_every == 0)
                    if self.step % t.log_every == 0 or do_eval or self.step == 1:
                        now = time.perf_counter()
                        record = self.record(loss_sum, window_tokens, now - window_start)
                        if do_eval:
                            record.update(self.evaluate_or_report(is_last))
                        self.log(record)
                        window_start, window_tokens = time.perf_counter(), 0
                        bar.update(
                            row,
                            loss=f"loss {record['loss']:.3f}",
                            lr=f"lr {record['lr']:.1e}",
                            rate=loggers.rate_text(record),
                        )
                    bar.update(row, completed=self.step)
                    self.stop_on_signal(flag.signum)
                    if is_last:
                        final = self.save() if self.dist.main else None
                    elif t.save_every and self.step % t.save_every == 0 and self.dist.main:
                        self.save()
                if self.step == self.start_step:
                    final = self.already_done()
        finally:
            for logger in self.loggers:
                logger.close()
        if self.eval_failure is not None:
            raise self.eval_failure
        return self.summary(final)

    def evaluate_or_report(self, is_last: bool) -> dict:
        """The evaluation; the final one may fail without losing the run: the checkpoint is
        saved without it and the failure is reported after."""
        if not is_last:
            return self.evaluate()
        try:
            return self.evaluate()
        except Exception as e:  # noqa: BLE001 - re-raised once the final checkpoint is saved
            self.eval_failure = e
            return {}

    def stop_on_signal(self, signum: int | None) -> None:
        stop = parallel.agree_on_signal(signum, self.dist)
        if stop is None:
            return
        path = self.save() if self.dist.main else None
        code = 130 if stop == signal.SIGINT else 143
        saved = f"saved {path}" if self.dist.main else f"rank {self.dist.rank}: rank 0 saves"
        raise Interrupted(code, f"interrupted at step {self.step}; {saved}")

    def already_done(self) -> Path | None:
        final = checkpoint.newest_in_run(self.run_dir)
        if final is not None:
            self.last = checkpoint.read_state(final).get("metrics", {})
        console.info(f"train: already at step {self.step} (raise train.max_steps to go on)")
        return final

    def summary(self, final: Path | None) -> dict:
        last = self.last
        extra, closing = self.task.summary(last)
        if closing:
            console.info(f"{closing}; saved {final}")
        return {
            "run_dir": str(self.run_dir),
            "checkpoint": str(final) if final else None,
            "step": self.step,
            "params": self.model.num_params(),
            "train_loss": last.get("loss"),
            "val_loss": last.get("val_loss"),
            **extra,
            "tokens_seen": self.tokens_seen,
            "elapsed_s": round(self.elapsed(), 2),
        }
