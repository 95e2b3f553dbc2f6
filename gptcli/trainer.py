"""The one training loop, shared by `pretrain` and `finetune`.

A Trainer owns the optimizers, the schedule, evaluation, metrics, checkpoints and resuming;
the task (tasks/) says what is learned, and autotune how it runs (dtype, compile). Batches
depend only on (seed, step), and optimizer and RNG states are saved with every checkpoint, so a
resumed run continues exactly where the interrupted one stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import torch

from gptcli import (
    autotune,
    checkpoint,
    checkpoint_tensors,
    console,
    loggers,
    memory,
    optim,
    parallel,
    run,
)
from gptcli.checkpoint_tensors import Loaded, Sharding, Snapshot
from gptcli.console import Interrupted, Terminated, UserError
from gptcli.data import tokenize
from gptcli.device import (
    Dist,
    autocast,
    keep_freed_memory,
    peak_flops,
    pick_device,
    remeasure_peak,
    return_large_buffers,
)
from gptcli.files import sha256_file
from gptcli.model import GPT
from gptcli.recipe import ModelConfig, Recipe, TrainConfig, shape_change
from gptcli.tasks.base import Task
from gptcli.tokenizer import TOKENIZER_FILE

# a window's tokens/s under this share of the run's best means something else took the cores
SLOWDOWN = 0.25


class SlowdownWatch:
    """Warns once when training's tokens/s falls far below the run's own best: on a CPU, the
    usual cause is another process taking a core while torch's threads spin-wait for it."""

    def __init__(self, windows: int = 3) -> None:
        self.windows = windows
        self.best = 0.0
        self.recent: list[float] = []
        self.warned = False
        self.skip = 1

    def restart(self) -> None:
        """The next window is slow for a known reason (a compile): leave it out."""
        self.skip, self.recent = 1, []

    def check(self, rate: float) -> str | None:
        """The warning to give after a window of rate tokens/s, or None."""
        if self.skip:  # a run's first window holds its warm-up
            self.skip -= 1
            return None
        self.recent = [*self.recent, rate][-self.windows :]
        slow = len(self.recent) == self.windows and max(self.recent) < SLOWDOWN * self.best
        self.best = max(self.best, rate)
        if not slow or self.warned:
            return None
        self.warned = True
        return (
            f"train: {rate:,.0f} tokens/s, down from {self.best:,.0f}: another process is "
            "likely busy on this machine's cores, and torch's threads spin while they wait for "
            "the one it took; stop it, or start gptcli with OMP_WAIT_POLICY=PASSIVE (or "
            "OMP_NUM_THREADS set to the cores left free)"
        )


class TaskStep(torch.nn.Module):
    """The task's loss as one module call, which DDP and torch.compile then wrap whole: a
    classifier's loss reads model.hidden and its head, which model.forward never runs."""

    def __init__(self, model: GPT, task: Task) -> None:
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, *batch: torch.Tensor) -> torch.Tensor:
        return self.task.loss(self.model, batch)


class SignalFlag:
    """SIGINT/SIGTERM set a flag the loop checks after each step, so it can save and exit.
    Inside raising() they raise at once instead (KeyboardInterrupt, Terminated): for work
    that writes nothing and may stop anywhere, such as the 30 s and more a first compile takes."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}
        self.raises = False

    def __enter__(self) -> SignalFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self.signum = signum
        if self.raises:
            self.raises = False  # once: a second signal finds the stop under way
            raise_for(signum)

    @contextlib.contextmanager
    def raising(self) -> Iterator[None]:
        if self.signum is not None:  # came before: stop before starting the work
            raise_for(self.signum)
        self.raises = True
        try:
            yield
        finally:
            self.raises = False

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def raise_for(signum: int) -> NoReturn:
    """What SIGINT and SIGTERM raise outside the loop's flag: the CLI exits 130 or 143."""
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


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
    if recipe.task.kind == "lm" and not tokenize.is_up_to_date(recipe, run_dir, given_tokenizer):
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
    return device


def build_model(
    cfg: ModelConfig, t: TrainConfig, dist: Dist, seed: int, frozen: bool = False
) -> GPT:
    """The model to train, initialised from seed, once its memory estimate is found to fit
    this rank (memory.check_training; frozen: LoRA trains no base weight)."""
    memory.check_training(cfg, t, training_device(t, dist), dist.world, frozen)
    console.info(f"train: building the model ({cfg.n_layer} layers of width {cfg.n_embd})")
    torch.manual_seed(seed)
    return GPT(cfg)


def for_world(t: TrainConfig, run_dir: Path, dist: Dist) -> TrainConfig:
    """The train settings on this many ranks: a run keeps the global batch it started with
    (batch_size x grad_accum x ranks), so resuming on other ranks rescales grad_accum."""
    ckpt = checkpoint.newest_in_run(run_dir)
    global_batch = checkpoint.read_state(ckpt).get("global_batch") if ckpt else None
    if global_batch is None:
        return t
    per_micro = t.batch_size * dist.world
    if global_batch % per_micro:
        raise UserError(
            f"cannot resume {run_dir} on {dist.world} rank(s): its global batch of "
            f"{global_batch} sequences is not train.batch_size {t.batch_size} x "
            f"{dist.world} rank(s) x a whole grad_accum; use a number of ranks that divides it"
        )
    grad_accum = global_batch // per_micro
    if grad_accum != t.grad_accum:
        console.info(
            f"train: {dist.world} rank(s) keep the run's global batch of {global_batch} "
            f"sequences: grad_accum {t.grad_accum} -> {grad_accum}"
        )
    return dataclasses.replace(t, grad_accum=grad_accum)


def resume(
    run_dir: Path,
    model: GPT,
    optimizers: list,
    t: TrainConfig,
    wrapper: Any,
    read_base: Callable[[Path], Loaded] | None = None,
) -> tuple[int, int, float]:
    """Load the run's newest checkpoint into model and optimizers (through the parallel
    wrapper, which keeps each rank's shards); (step, tokens, elapsed). read_base reads a
    LoRA run's base model (see checkpoint_tensors.load_full)."""
    resume_from = checkpoint.newest_in_run(run_dir)
    if resume_from is None:
        return 0, 0, 0.0
    change = shape_change(checkpoint.model_config_from_json(resume_from / "config.json"), model.cfg)
    same_tokenizer = sha256_file(resume_from / TOKENIZER_FILE) == sha256_file(
        run_dir / TOKENIZER_FILE
    )
    if change or not same_tokenizer:
        raise UserError(f"cannot resume {resume_from}: {change or 'the tokenizer changed'}")
    loaded = checkpoint_tensors.load_full(resume_from, merge_lora=False, read_base=read_base)
    wrapper.load_weights(model, loaded.weights, resume_from / "model.safetensors")
    groups = loaded.state.get("optimizer_param_groups")
    if groups:
        saved = checkpoint_tensors.OptimizerState(resume_from)
        checkpoint_tensors.restore_optimizers(optimizers, saved, groups)
    checkpoint_tensors.restore_rng(checkpoint_tensors.load_trainer_tensors(resume_from))
    old_train = loaded.state.get("train", {})
    # ranks and their parallelism are not part of a run: grad_accum follows the ranks
    same_run = {"parallel", "grad_accum"} if "global_batch" in loaded.state else {"parallel"}
    changed = [
        f"{k} {old_train[k]!r} -> {v!r}"
        for k, v in dataclasses.asdict(t).items()
        if k in old_train and old_train[k] != v and k not in same_run
    ]
    step = loaded.state["step"]
    if changed:
        console.warn(
            f"resuming with changed train settings (they apply from step {step} on): "
            + ", ".join(changed)
        )
    console.info(f"train: resuming from {resume_from} (step {step})")
    return step, loaded.state.get("tokens_seen", 0), loaded.state.get("elapsed_s", 0.0)


class Trainer:
    """Trains model on task until train.max_steps, resuming from the run's newest checkpoint.

    Under torchrun every rank runs one; each draws its own batches, rank 0 logs and saves.
    read_base reads a LoRA run's base model when it resumes (finetune passes `load.load`, for
    a base that may be an HF folder; training itself never reads HF folders).
    """

    def __init__(
        self,
        recipe: Recipe,
        run_dir: Path,
        model: GPT,
        task: Task,
        dist: Dist | None = None,
        read_base: Callable[[Path], Loaded] | None = None,
    ) -> None:
        self.run_dir, self.model, self.task = run_dir, model, task
        self.dist = dist or Dist()
        self.t = for_world(recipe.train, run_dir, self.dist)
        self.device = training_device(self.t, self.dist)
        self.auto = autotune.recorded_auto(run_dir, self.device)
        self.amp = autotune.pick_amp(self.t, self.device, self.dist, model.cfg, self.auto)
        if self.dist.main:
            checkpoint_tensors.clean_stale_temps(run_dir)
        model.activation_checkpointing = self.t.activation_checkpointing
        kind = parallel.choose(
            self.t.parallel, model.num_params(), self.t.optimizer, self.dist, self.device
        )
        if kind != "fsdp":  # fully_shard moves each block's shard itself: no rank holds it all
            model.to(self.device)
        if self.device.type == "cpu":
            return_large_buffers() if kind == "fsdp" else keep_freed_memory()
        self.parallel = parallel.wrap(
            kind, TaskStep(model, task), list(model.blocks), self.dist, self.device, self.amp
        )
        self.optimizers = optim.build_optimizers(model, self.t, self.device)
        self.step, self.tokens_seen, self.elapsed_before = resume(
            run_dir, model, self.optimizers, self.t, self.parallel, read_base
        )
        self.start_step = self.step
        if self.dist.main:  # rank 0 alone: it is the one that appends after
            loggers.truncate_metrics(run_dir, self.step)
        shape = (model.cfg, self.t.batch_size, self.amp, type(task).__name__)
        self.compiling = autotune.AutoCompile(
            model, self.t, self.device, self.dist, self.auto, shape
        )
        self.compiling.start(self.step)
        self.watch = SlowdownWatch()
        self.peak, peak_source = peak_flops(self.device, self.amp)
        self.peak_rechecked = False
        self.flops_per_token = model.flops_per_token()
        self.announce(peak_source)
        self.memory = memory.estimate(
            model, self.t, self.amp, self.dist.world, self.parallel.shards
        )
        console.info(f"train: {memory.summary(self.memory)}")
        if self.dist.main:
            memory.save(run_dir, self.memory)
        self.versions = run.versions(torch.__version__)
        self.last: dict = {}
        self.eval_failure: Exception | None = None
        self.loggers: list = [loggers.ConsoleLogger(self.t.max_steps)]
        if self.dist.main:  # opened last: fit closes them
            self.loggers += loggers.open_loggers(recipe, run_dir, self.start_step)

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
        return self.apply_gradients(*self.accumulate_gradients())

    def compiling_step(self, flag: SignalFlag) -> tuple[torch.Tensor, int]:
        """The step that compiles the regions (30 s and more on a CPU) stops at once on a
        signal rather than after the compile: its forward and backward change no weight, no
        optimizer state and no file, so with the RNG put back the run stops as after the step
        before (stop_on_signal). One process only: ranks stopped mid-backward would leave the
        others waiting in its collectives."""
        console.info(f"train: compiling step {self.step + 1} (torch.compile) ...")
        rng = checkpoint_tensors.rng_tensors()
        try:
            with flag.raising():
                loss_sum, tokens = self.accumulate_gradients()
        except KeyboardInterrupt:
            checkpoint_tensors.restore_rng(rng)
            self.stop_on_signal(flag.signum)
            raise  # no signal recorded: a KeyboardInterrupt of some other origin
        self.compiling.compiled()
        return self.apply_gradients(loss_sum, tokens)

    def accumulate_gradients(self) -> tuple[torch.Tensor, int]:
        """Forward and backward over grad_accum micro-batches: (summed loss, tokens)."""
        t, dist, device = self.t, self.dist, self.device
        loss_sum = torch.zeros((), device=device)
        tokens = 0
        try:
            for micro in range(t.grad_accum):
                # step s trains on micro-batches s*M .. s*M+M-1 (M = grad_accum x ranks, fixed
                # by the global batch): the same batches whatever the number of ranks
                index = (self.step * t.grad_accum + micro) * dist.world + dist.rank
                batch = self.task.batch(index)
                tokens += batch[0].numel() * dist.world
                if device.type == "cuda":  # page-locked, so the copy overlaps compute
                    batch = tuple(b.pin_memory() for b in batch)
                batch = tuple(b.to(device, non_blocking=True) for b in batch)
                with self.parallel.no_sync(micro == t.grad_accum - 1):
                    with autocast(device, self.amp):
                        loss = self.parallel.module(*batch)
                    (loss / t.grad_accum).backward()
                loss_sum += loss.detach()
        except torch.cuda.OutOfMemoryError:
            raise UserError(
                f"CUDA out of memory at train.batch_size={t.batch_size}: lower it and "
                "raise train.grad_accum to keep the tokens per step"
            ) from None
        return loss_sum, tokens

    def apply_gradients(self, loss_sum: torch.Tensor, tokens: int) -> tuple[torch.Tensor, int]:
        """The optimizer step on the accumulated gradients; passes on (loss_sum, tokens)."""
        t = self.t
        optim.set_lr(self.optimizers, optim.lr_factor(self.step, t))
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
            "lr": optim.lr_at(self.step - 1, t),
            "tokens_per_s": round(rate, 1),
            "tokens_seen": self.tokens_seen,
            "elapsed_s": round(self.elapsed(), 3),
        }
        if self.peak:
            reached = self.flops_per_token * rate / self.dist.world
            if reached > self.peak and self.device.type == "cpu" and not self.peak_rechecked:
                self.peak_rechecked = True  # once a run: a second probe would read the same
                old, self.peak = self.peak, remeasure_peak(self.device, self.amp, reached)
                console.info(
                    f"train: this run reached {reached / 1e12:.3f} TFLOP/s, over the "
                    f"{old / 1e12:.3f} cached as this CPU's peak (measured while it was busy): "
                    f"measured again, {self.peak / 1e12:.3f} TFLOP/s"
                )
            record["mfu"] = float(f"{reached / self.peak:.3g}")
        return record

    def evaluate(self) -> dict:
        """Eager: compiled blocks would compile again for a no-grad graph used this seldom."""
        compiled = self.compiling.on
        self.compiling.use(False)
        try:
            with self.parallel.evaluating():
                return self.task.evaluate(self.model, self.device, self.amp)
        finally:
            self.compiling.use(compiled)

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    # ----- checkpoints

    def state(self) -> dict:
        return {
            "tokens_seen": self.tokens_seen,
            "elapsed_s": round(self.elapsed(), 3),
            "data_position": self.step * self.t.grad_accum * self.dist.world,
            "global_batch": self.t.batch_size * self.t.grad_accum * self.dist.world,
            "metrics": self.last,
            "train": dataclasses.asdict(self.t),
            "auto": self.auto,
            "versions": self.versions,
        }

    @property
    def saves_here(self) -> bool:
        """Rank 0 saves a whole model; sharded, every rank saves its own shards."""
        return self.dist.main or self.parallel.shards

    def save(self) -> Path:
        snapshot = Snapshot(
            self.step,
            self.model.cfg,
            self.parallel.full_weights(self.model),
            self.run_dir / TOKENIZER_FILE,
            self.optimizers,
            self.state(),
            self.task.checkpoint_info,
        )
        sharded = self.parallel.shards  # then every rank writes its own optimizer shard
        sharding = Sharding(self.dist.rank, self.dist.world, self.device) if sharded else None
        path = checkpoint_tensors.save(self.run_dir, snapshot, sharding)
        if self.t.keep_last and self.dist.main:
            checkpoint_tensors.prune(self.run_dir, self.t.keep_last)
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
        exit_code = 1  # what the trackers record: finished, killed (130, 143) or failed
        try:
            with SignalFlag() as flag, console.progress("loss", "lr", "rate") as bar:
                row = bar.add_task(
                    "train", total=t.max_steps, completed=self.step, loss="", lr="", rate=""
                )
                while self.step < t.max_steps:
                    step_start = autotune.step_clock()
                    if self.compiling.compiles_next and self.dist.world == 1:
                        loss_sum, tokens = self.compiling_step(flag)
                    else:
                        loss_sum, tokens = self.train_step()
                    if self.compiling.timing:
                        self.after_timed_step(autotune.step_clock() - step_start)
                    if self.step == self.start_step + 1:
                        self.record_peak_memory()
                    window_tokens += tokens
                    is_last = self.step == t.max_steps
                    do_eval = is_last or (t.eval_every and self.step % t.eval_every == 0)
                    if self.step % t.log_every == 0 or do_eval or self.step == 1:
                        now = time.perf_counter()
                        record = self.record(loss_sum, window_tokens, now - window_start)
                        self.watch_rate(record["tokens_per_s"])
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
                        final = self.save() if self.saves_here else None
                    elif t.save_every and self.step % t.save_every == 0 and self.saves_here:
                        self.save()
                if self.step == self.start_step:
                    final = self.already_done()
            exit_code = 0 if self.eval_failure is None else 1
        except Interrupted as e:
            exit_code = e.code
            raise
        finally:
            self.compiling.use(False)  # the model leaves as it came: plain modules
            loggers.close_all(self.loggers, exit_code)
        if self.eval_failure is not None:
            raise self.eval_failure
        return self.summary(final)

    def after_timed_step(self, seconds: float) -> None:
        """compile: auto's timed steps; a compile, or their end, makes the next window slow
        for a known reason, which the slowdown watch leaves out."""
        if self.compiling.after_timed_step(seconds, self.step):
            self.watch.restart()

    def watch_rate(self, rate: float) -> None:
        """On CPU, warn once when tokens/s collapses (see SlowdownWatch)."""
        if self.device.type == "cpu" and self.dist.main:
            warning = self.watch.check(rate)
            if warning:
                console.warn(warning)

    def record_peak_memory(self) -> None:
        """On CUDA, the measured peak of the first step beside the estimate (rank 0's)."""
        if self.device.type != "cuda":
            return
        peak = torch.cuda.max_memory_allocated(self.device)
        self.memory["peak_allocated"] = peak
        console.info(f"train: peak memory allocated in the first step: {memory.mib(peak)}")
        if self.dist.main:
            memory.save(self.run_dir, self.memory)

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
        code = 130 if stop == signal.SIGINT else 143
        if self.step == 0:  # stopped in the first step: nothing trained, nothing to save
            raise Interrupted(code, "interrupted before step 1 finished; nothing saved")
        path = self.save() if self.saves_here else None
        saver = "saved its shards" if self.parallel.shards else "rank 0 saves"
        saved = f"saved {path}" if self.dist.main else f"rank {self.dist.rank}: {saver}"
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
