"""The one training loop, shared by `pretrain` and `finetune`.

It owns the optimizer, the learning-rate schedule, evaluation, metrics.jsonl, checkpoints and
resuming. Batches depend only on (seed, step), and the optimizer and RNG states are saved with
every checkpoint, so a resumed run continues exactly where the interrupted one was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import time
from pathlib import Path
from typing import Any

import torch

from gptcli import __version__, checkpoint, console, data, tokenizer
from gptcli.console import Interrupted, UserError
from gptcli.device import (
    Dist,
    autocast_dtype,
    init_distributed,
    keep_freed_memory,
    peak_flops,
    pick_device,
    why_no_compile,
)
from gptcli.model import GPT, param_groups
from gptcli.recipe import ModelConfig, Recipe, TrainConfig

Optimizer = torch.optim.Optimizer

# Keys that only change how the model is trained; all others change its shape.
NON_SHAPE_KEYS = {"dropout"}


def lr_factor(step: int, t: TrainConfig) -> float:
    """Multiplier on each parameter group's base lr: linear warmup, then cosine decay to
    min_lr_ratio, or warmup-stable-decay (flat, then linear decay over decay_fraction), or flat."""
    if step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    if t.lr_schedule == "constant":
        return 1.0
    if t.lr_schedule == "wsd":
        decay_start = t.max_steps - int(t.decay_fraction * t.max_steps)
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start) / max(1, t.max_steps - decay_start))
        return 1.0 - progress * (1.0 - t.min_lr_ratio)
    progress = min(1.0, (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps))
    return t.min_lr_ratio + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - t.min_lr_ratio)


def lr_at(step: int, t: TrainConfig) -> float:
    return t.lr * lr_factor(step, t)


class BatchedMuon(torch.optim.Muon):
    """torch's Muon, with the Newton-Schulz iterations of same-shape matrices run as one batch.

    torch iterates matrix by matrix: 15 small matmuls each, 300 for the Shakespeare recipe's 20
    matrices, which took 31 ms of its 100 ms CPU step. Batched by shape (after turning tall
    matrices wide, as torch does) they are 45 bmm calls. Same state ("momentum_buffer") and
    the same arithmetic as torch.optim.Muon, so checkpoints and resume work either way.
    """

    def __init__(self, params, **options) -> None:  # noqa: ANN001 - Optimizer's params
        if options.get("adjust_lr_fn") not in (None, "original"):  # the only scaling step() does
            raise ValueError("BatchedMuon scales lr as torch's default ('original') only")
        super().__init__(params, **options)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 - Optimizer.step's signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            a, b, c = group["ns_coefficients"]
            by_shape: dict[tuple, list] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                wide = update.T if update.size(0) > update.size(1) else update
                by_shape.setdefault(tuple(wide.shape), []).append((p, wide))
            for items in by_shape.values():
                x = torch.stack([wide for _, wide in items]).bfloat16()
                x = x / x.norm(dim=(1, 2), keepdim=True).clamp(min=group["eps"])
                for _ in range(group["ns_steps"]):
                    gram = x @ x.mT
                    x = torch.baddbmm(
                        x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a
                    )
                for (p, _), update in zip(items, x, strict=True):
                    update = update.T if p.size(0) > p.size(1) else update
                    p.mul_(1 - lr * group["weight_decay"])
                    # torch's default lr scaling ("original"): sqrt(max(1, rows / cols))
                    p.add_(update, alpha=-lr * math.sqrt(max(1.0, p.size(0) / p.size(1))))
        return loss


def build_optimizers(model: GPT, t: TrainConfig, device: torch.device) -> list[Optimizer]:
    """AdamW for everything, or Muon for the blocks' weight matrices and AdamW for the rest
    (embeddings, head, norms, biases), as the Muon authors recommend."""
    fused = device.type in ("cuda", "cpu")  # one kernel for all parameters (3 % faster on CPU)
    if t.optimizer == "adamw":
        groups = param_groups(model.parameters(), t.weight_decay)
        optimizers: list[Optimizer] = [
            torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), fused=fused)
        ]
    else:
        trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        hidden = [p for n, p in trained if n.startswith("blocks.") and p.dim() == 2]
        hidden_ids = {id(p) for p in hidden}
        rest = [p for _, p in trained if id(p) not in hidden_ids]
        optimizers = [
            BatchedMuon(hidden, lr=t.muon_lr, weight_decay=t.weight_decay),
            torch.optim.AdamW(
                param_groups(rest, t.weight_decay), lr=t.lr, betas=(t.beta1, t.beta2), fused=fused
            ),
        ]
    for opt in optimizers:
        for group in opt.param_groups:
            group["base_lr"] = group["lr"]
    return optimizers


def bits_per_byte(loss: float, manifest: dict, split: str = "val") -> float:
    s = manifest[split]
    return loss / math.log(2) * s["tokens"] / max(s["bytes"], 1)


@torch.no_grad()
def evaluate(
    model: GPT, batches: list[tuple], device: torch.device, amp: torch.dtype | None
) -> float:
    """Mean loss per target token over the batches (targets of -1 carry no loss: padding, or
    the prompt tokens of SFT examples)."""
    model.eval()
    total, count = 0.0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with _autocast(device, amp):
            _, loss = model(x, y)
        n = (y != -1).sum().item()
        total += loss.item() * n
        count += n
    model.train()
    return total / max(count, 1)


class LMTask:
    """Next-token prediction on the run's token shards: `pretrain` and `finetune` task: lm.

    A task gives the trainer batches by step index, a loss, and an evaluation; finetune.py
    has the others (sft, classify). The trainer itself knows nothing of what is learned.
    """

    checkpoint_info: dict = {"task": "lm"}

    def __init__(self, run_dir: Path, manifest: dict, block_size: int, t: TrainConfig, seed: int):
        self.manifest = manifest
        self.train = data.Batches(
            data.load_shard(run_dir, "train", manifest), block_size, t.batch_size, seed
        )
        val_tokens = data.load_shard(run_dir, "val", manifest)
        if len(val_tokens) < 3:
            raise UserError("the validation split has fewer than 3 tokens; raise data.val_fraction")
        val_block = min(block_size, len(val_tokens) - 2)
        self.val = data.Batches(val_tokens, val_block, t.batch_size, seed).eval_batches(
            t.eval_batches
        )

    def batch(self, index: int) -> tuple[torch.Tensor, ...]:
        return self.train.get(index)

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return model(*batch)[1]

    def evaluate(self, model: GPT, device: torch.device, amp: torch.dtype | None) -> dict:
        val_loss = evaluate(model, self.val, device, amp)
        return {
            "val_loss": round(val_loss, 5),
            "val_bpb": round(bits_per_byte(val_loss, self.manifest), 5),
        }

    def summary(self, last: dict) -> tuple[dict, str]:
        """Extra summary keys and the closing line."""
        unigram = round(self.manifest["val_unigram_bpb"], 5)
        extra = {"val_bpb": last.get("val_bpb"), "unigram_bpb": unigram}
        if last.get("val_bpb") is None:
            return extra, ""
        return extra, (
            f"done: val loss {last['val_loss']:.4f} = {last['val_bpb']:.3f} bits/byte; "
            f"unigram baseline {unigram:.3f} bits/byte (ratio {last['val_bpb'] / unigram:.2f})"
        )


class TaskStep(torch.nn.Module):
    """The task's loss as one module call, which DDP and torch.compile then wrap whole: a
    classifier's loss reads model.hidden and its head, which model.forward never runs."""

    def __init__(self, model: GPT, task: Any) -> None:
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, *batch: torch.Tensor) -> torch.Tensor:
        return self.task.loss(self.model, batch)


def _autocast(device: torch.device, amp: torch.dtype | None):
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp)


class _SignalFlag:
    """SIGINT/SIGTERM set a flag the loop checks after each step, so it can save and exit."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _SignalFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _shape_change(old: ModelConfig, new: ModelConfig) -> str | None:
    for f in dataclasses.fields(ModelConfig):
        if f.name not in NON_SHAPE_KEYS and getattr(old, f.name) != getattr(new, f.name):
            return f"model.{f.name} was {getattr(old, f.name)!r}, now {getattr(new, f.name)!r}"
    return None


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
    change = _shape_change(old, cfg)
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


def git_commit() -> str:
    """The commit of the gptcli source doing the training (+ '-dirty' for local edits)."""
    import subprocess

    src = str(Path(__file__).resolve().parent)
    try:
        head = subprocess.run(
            ["git", "-C", src, "rev-parse", "HEAD"], capture_output=True, text=True
        )
        if head.returncode != 0:
            return "unknown"  # installed from a wheel or sdist: no repository to ask
        status = ["git", "-C", src, "status", "--porcelain", "--untracked-files=no"]
        dirty = subprocess.run(status, capture_output=True, text=True).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except OSError:
        return "unknown"


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records logged after the checkpoint we resume from: they will be redone."""
    if not path.is_file():
        return
    keep = [
        ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step
    ]
    data.write_atomic(path, "".join(ln + "\n" for ln in keep).encode())


def _resume(run_dir: Path, cfg: ModelConfig, model: GPT, optimizers: list, t: TrainConfig):
    """Load the run's newest checkpoint into model and optimizers; (step, tokens, elapsed)."""
    resume_from = checkpoint.newest_in_run(run_dir)
    if resume_from is None:
        return 0, 0, 0.0
    tok_path = run_dir / tokenizer.TOKENIZER_FILE
    change = _shape_change(checkpoint.model_config_from_json(resume_from / "config.json"), cfg)
    if change or tokenizer.file_hash(resume_from / "tokenizer.json") != tokenizer.file_hash(
        tok_path
    ):
        raise UserError(f"cannot resume {resume_from}: {change or 'the tokenizer changed'}")
    loaded = checkpoint.load(resume_from, merge_lora=False)
    model.load_state_dict(loaded.weights, strict=not cfg.tie_embeddings)
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
    if changed:
        console.warn(
            f"resuming with changed train settings (they apply from step {loaded.state['step']} "
            f"on): {', '.join(changed)}"
        )
    step = loaded.state["step"]
    console.info(f"train: resuming from {resume_from} (step {step})")
    _truncate_metrics(run_dir / "metrics.jsonl", step)
    return step, loaded.state.get("tokens_seen", 0), loaded.state.get("elapsed_s", 0.0)


def _all_mean(value: torch.Tensor, dist: Dist) -> torch.Tensor:
    if dist.world > 1:
        import torch.distributed as tdist

        tdist.all_reduce(value)
        value = value / dist.world
    return value


def fit(
    recipe: Recipe,
    run_dir: Path,
    model: GPT,
    task: Any,
    dist: Dist | None = None,
) -> dict:
    """Train model on task until train.max_steps, resuming from the run's newest checkpoint.

    task is an LMTask or one of finetune.py's tasks. Under torchrun every rank runs this; each
    draws its own batches, rank 0 logs and saves.
    """
    t = recipe.train
    cfg = model.cfg
    dist = dist or Dist()
    device = pick_device(t.device)
    if device.type == "cuda" and dist.world > 1:
        device = torch.device("cuda", dist.local_rank)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    elif device.type == "cpu":
        keep_freed_memory()
    amp = autocast_dtype(device, t.dtype)
    tok_path = run_dir / tokenizer.TOKENIZER_FILE
    if dist.main:
        checkpoint.clean_stale_temps(run_dir)

    model.to(device)
    optimizers = build_optimizers(model, t, device)
    start_step, tokens_seen, elapsed_before = _resume(run_dir, cfg, model, optimizers, t)
    step_model: torch.nn.Module = TaskStep(model, task)
    ddp = None
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(
            step_model,
            device_ids=[device.index] if device.type == "cuda" else None,
        )
        step_model = ddp
    if t.compile == "on" or (t.compile == "auto" and device.type == "cuda"):
        reason = why_no_compile(device)
        if reason:
            console.warn(f"train.compile: {reason}; training without it")
        else:
            console.info("train: torch.compile: the first step compiles (cached for later runs)")
            step_model = torch.compile(step_model)

    tokens_per_step = t.batch_size * t.grad_accum * cfg.block_size * dist.world
    n_params = model.num_params()
    n_trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    trained_note = f" ({n_trained / 1e6:.2f}M trained)" if n_trained < n_params else ""
    peak, peak_source = peak_flops(device, amp)
    flops_per_token = model.flops_per_token()
    precision = f"{str(amp).removeprefix('torch.')} autocast" if amp else "fp32"
    ranks = f" x {dist.world} ranks" if dist.world > 1 else ""
    console.info(
        f"train: {n_params / 1e6:.2f}M parameters{trained_note}, {device.type}{ranks} {precision}, "
        f"steps {start_step}->{t.max_steps}, {tokens_per_step:,} tokens/step"
        + (f", MFU against {peak * dist.world / 1e12:.2f} TFLOP/s ({peak_source})" if peak else "")
    )

    commit = git_commit()

    def state(step: int, last: dict) -> dict:
        return {
            "tokens_seen": tokens_seen,
            "elapsed_s": round(elapsed_before + time.perf_counter() - started, 3),
            "data_position": step * t.grad_accum * dist.world,
            "metrics": last,
            "train": dataclasses.asdict(t),
            "versions": {
                "gptcli": __version__,
                "torch": torch.__version__,
                "tokenizers": __import__("tokenizers").__version__,
                "git": commit,
            },
        }

    def save(step: int, last: dict) -> Path:
        path = checkpoint.save(
            run_dir, step, model, optimizers, state(step, last), tok_path, task.checkpoint_info
        )
        if t.keep_last:
            checkpoint.prune(run_dir, t.keep_last)
        return path

    with console.writing(run_dir / "metrics.jsonl"):
        metrics_file = open(run_dir / "metrics.jsonl", "a") if dist.main else None

    def write_metrics(record: dict) -> None:
        if metrics_file is not None:
            with console.writing(run_dir / "metrics.jsonl"):
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()

    started = time.perf_counter()
    window_start, window_tokens = started, 0
    last: dict = {}
    final: Path | None = None
    step = start_step
    model.train()
    try:
        with _SignalFlag() as flag, console.progress("loss", "lr", "rate") as bar:
            progress_row = bar.add_task(
                "train", total=t.max_steps, completed=start_step, loss="", lr="", rate=""
            )
            while step < t.max_steps:
                factor = lr_factor(step, t)
                for opt in optimizers:
                    for group in opt.param_groups:
                        group["lr"] = group["base_lr"] * factor
                loss_sum = torch.zeros((), device=device)
                step_tokens = 0
                try:
                    for micro in range(t.grad_accum):
                        index = (step * t.grad_accum + micro) * dist.world + dist.rank
                        batch = task.batch(index)
                        step_tokens += batch[0].numel() * dist.world
                        if device.type == "cuda":  # page-locked, so the copy overlaps compute
                            batch = tuple(b.pin_memory() for b in batch)
                        batch = tuple(b.to(device, non_blocking=True) for b in batch)
                        syncing = ddp is None or micro == t.grad_accum - 1
                        with contextlib.nullcontext() if syncing else ddp.no_sync():
                            with _autocast(device, amp):
                                loss = step_model(*batch)
                            (loss / t.grad_accum).backward()
                        loss_sum += loss.detach()
                except torch.cuda.OutOfMemoryError:
                    raise UserError(
                        f"CUDA out of memory at train.batch_size={t.batch_size}: lower it and "
                        "raise train.grad_accum to keep the tokens per step"
                    ) from None
                if t.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                for opt in optimizers:
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                step += 1
                tokens_seen += step_tokens
                window_tokens += step_tokens

                is_last = step == t.max_steps
                do_eval = is_last or (t.eval_every and step % t.eval_every == 0)
                if step % t.log_every == 0 or do_eval or step == 1:
                    loss_value = _all_mean(loss_sum, dist).item() / t.grad_accum
                    now = time.perf_counter()
                    rate = window_tokens / max(now - window_start, 1e-9)
                    record = {
                        "step": step,
                        "loss": round(loss_value, 5),
                        "lr": t.lr * factor,
                        "tokens_per_s": round(rate, 1),
                        "tokens_seen": tokens_seen,
                        "elapsed_s": round(elapsed_before + now - started, 3),
                    }
                    if peak:
                        mfu = flops_per_token * rate / (peak * dist.world)
                        record["mfu"] = float(f"{mfu:.3g}")
                    if do_eval and not is_last:
                        record.update(task.evaluate(model, device, amp))
                    last = {**last, **record}
                    if not is_last:
                        write_metrics(record)
                    window_start, window_tokens = time.perf_counter(), 0
                    shown = f"{rate:,.0f} tok/s" + (f" mfu {record['mfu']:.1%}" if peak else "")
                    bar.update(
                        progress_row,
                        loss=f"loss {loss_value:.3f}",
                        lr=f"lr {t.lr * factor:.1e}",
                        rate=shown,
                    )
                    if not console.progress_enabled():
                        val = "".join(
                            f" | {name} {record[k]:.3f}"
                            for k, name in (("val_loss", "val"), ("val_accuracy", "accuracy"))
                            if k in record
                        )
                        console.info(
                            f"step {step}/{t.max_steps} | loss {loss_value:.3f}{val} "
                            f"| lr {t.lr * factor:.2e} | {shown}"
                        )
                bar.update(progress_row, completed=step)

                stop = flag.signum
                if dist.world > 1:  # every rank stops at the same step, or DDP hangs
                    signal_seen = torch.tensor([flag.signum or 0], dtype=torch.int64)
                    import torch.distributed as tdist

                    tdist.all_reduce(signal_seen, op=tdist.ReduceOp.MAX)
                    stop = int(signal_seen.item()) or None
                if stop is not None:
                    path = save(step, last) if dist.main else None
                    code = 130 if stop == signal.SIGINT else 143
                    saved = f"saved {path}" if dist.main else f"rank {dist.rank}: rank 0 saves"
                    raise Interrupted(code, f"interrupted at step {step}; {saved}")
                if not is_last and t.save_every and step % t.save_every == 0 and dist.main:
                    save(step, last)
            # Final: save first (so a failing evaluation cannot lose the run), then evaluate.
            if step > start_step:
                final = save(step, last) if dist.main else None
                final_record = {**record, **task.evaluate(model, device, amp)}
                last.update(final_record)
                write_metrics(final_record)
            else:
                final = checkpoint.newest_in_run(run_dir)
                if final is not None:
                    last = checkpoint.load(final).state.get("metrics", {})
                console.info(f"train: already at step {step} (raise train.max_steps to go on)")
    finally:
        if metrics_file is not None:
            metrics_file.close()

    extra, closing = task.summary(last)
    summary = {
        "run_dir": str(run_dir),
        "checkpoint": str(final) if final else None,
        "step": step,
        "params": n_params,
        "train_loss": last.get("loss"),
        "val_loss": last.get("val_loss"),
        **extra,
        "tokens_seen": tokens_seen,
        "elapsed_s": round(elapsed_before + time.perf_counter() - started, 2),
    }
    if closing:
        console.info(f"{closing}; saved {final}")
    return summary


def new_run_dir(base: Path) -> Path:
    """--fresh: runs/<name>, or the first free runs/<name>-2, -3, ... (the old one is kept)."""
    if not base.exists() or not any(base.iterdir()):
        return base
    n = 2
    while (base.parent / f"{base.name}-{n}").exists():
        n += 1
    return base.parent / f"{base.name}-{n}"


def pretrain(recipe: Recipe, fresh: bool = False) -> dict | None:
    """`gptcli pretrain`: tokenize if needed, then train. Under torchrun, rank 0 prepares the
    run folder and holds its lock while the other ranks wait for it; it alone returns the
    summary (the others None, so a job prints one)."""
    from gptcli import recipe as recipe_mod

    dist = init_distributed(recipe.train.device)
    if not dist.main:
        console.set_quiet(True)
    run_dir, lock = open_run(recipe_mod.run_dir(recipe), fresh, dist)
    with lock:
        if dist.main:
            check_resumable(recipe, run_dir, None)
            data.prepare(recipe, run_dir)
            data.write_atomic(run_dir / "recipe.yaml", recipe_mod.dump(recipe).encode())
        barrier(dist)
        manifest = data.read_manifest(run_dir)
        vocab = manifest["vocab_size"]
        if recipe.model.vocab_size and recipe.model.vocab_size < vocab:
            raise UserError(
                f"model.vocab_size {recipe.model.vocab_size} is smaller than the tokenizer's "
                f"{vocab} tokens (use 0 to take the tokenizer's size)"
            )
        cfg = dataclasses.replace(recipe.model, vocab_size=recipe.model.vocab_size or vocab)
        torch.manual_seed(recipe.seed)
        model = GPT(cfg)
        task = LMTask(run_dir, manifest, cfg.block_size, recipe.train, recipe.seed)
        summary = fit(recipe, run_dir, model, task, dist=dist)
        barrier(dist)
        return summary if dist.main else None


def open_run(run_dir: Path, fresh: bool, dist: Dist) -> tuple[Path, Any]:
    """The folder a job trains in, and its lock (a context; rank 0 alone holds it).

    --fresh takes the first free name as rank 0 saw it: each rank picking its own sent a rank
    that looked after rank 0 had made runs/NAME-2 on to runs/NAME-3.
    """
    if fresh:
        run_dir = new_run_dir(run_dir)
        if dist.world > 1:
            import torch.distributed as tdist

            box = [str(run_dir)]
            tdist.broadcast_object_list(box, src=0)
            run_dir = Path(box[0])
    return run_dir, checkpoint.RunLock(run_dir) if dist.main else contextlib.nullcontext()


def barrier(dist: Dist) -> None:
    if dist.world > 1:
        import torch.distributed as tdist

        tdist.barrier()
