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
from gptcli.model import GPT, param_groups
from gptcli.recipe import ModelConfig, Recipe, TrainConfig

# Keys that only change how the model is trained; all others change its shape.
NON_SHAPE_KEYS = {"dropout"}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device is 'cuda' but no CUDA GPU is available (use device: auto)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("train.device is 'mps' but MPS is not available (use device: auto)")
    return torch.device(name)


def autocast_dtype(device: torch.device, dtype: str) -> torch.dtype | None:
    """None means plain fp32. auto = bf16 on CUDA GPUs that support it, fp32 elsewhere."""
    if dtype == "fp32":
        return None
    if dtype == "bf16":
        return torch.bfloat16
    if dtype == "fp16":
        if device.type != "cuda":
            raise UserError("train.dtype fp16 needs a CUDA GPU (use bf16 or fp32)")
        return torch.float16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def lr_at(step: int, t: TrainConfig) -> float:
    """Linear warmup, then cosine decay to lr * min_lr_ratio (or constant)."""
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    if t.lr_schedule == "constant":
        return t.lr
    progress = min(1.0, (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps))
    min_lr = t.lr * t.min_lr_ratio
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (t.lr - min_lr)


def bits_per_byte(loss: float, manifest: dict, split: str = "val") -> float:
    s = manifest[split]
    return loss / math.log(2) * s["tokens"] / max(s["bytes"], 1)


@torch.no_grad()
def evaluate(
    model: GPT, batches: list[tuple], device: torch.device, amp: torch.dtype | None
) -> float:
    model.eval()
    total, count = 0.0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with _autocast(device, amp):
            _, loss = model(x, y)
        total += loss.item() * y.numel()
        count += y.numel()
    model.train()
    return total / max(count, 1)


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
    old = checkpoint.model_config_from_json(ckpt / "config.json")
    if cfg is None:
        cfg = dataclasses.replace(
            recipe.model, vocab_size=recipe.model.vocab_size or old.vocab_size
        )
    change = _shape_change(old, cfg)
    if change:
        raise UserError(f"cannot resume {run_dir}: {change} (use --fresh for a new run folder)")
    if not data.is_up_to_date(recipe, run_dir, given_tokenizer):
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


def fit(
    recipe: Recipe,
    run_dir: Path,
    cfg: ModelConfig,
    manifest: dict,
    init_weights: dict[str, torch.Tensor] | None = None,
) -> dict:
    """Train until train.max_steps, resuming from the run's newest checkpoint if there is one."""
    t = recipe.train
    device = pick_device(t.device)
    amp = autocast_dtype(device, t.dtype)
    tok_path = run_dir / tokenizer.TOKENIZER_FILE
    checkpoint.clean_stale_temps(run_dir)

    torch.manual_seed(recipe.seed)
    model = GPT(cfg)
    if init_weights is not None:
        missing, unexpected = model.load_state_dict(init_weights, strict=False)
        if set(missing) - {"lm_head.weight"} or unexpected:
            raise UserError("the init checkpoint's weights do not match its config.json")
    model.to(device)
    optimizer = torch.optim.AdamW(
        param_groups(model, t.weight_decay),
        lr=t.lr,
        betas=(t.beta1, t.beta2),
        fused=device.type == "cuda",
    )

    start_step, tokens_seen, elapsed_before = 0, 0, 0.0
    resume_from = checkpoint.newest_in_run(run_dir)
    if resume_from is not None:
        change = _shape_change(checkpoint.model_config_from_json(resume_from / "config.json"), cfg)
        same_tokenizer = tokenizer.file_hash(resume_from / "tokenizer.json") == tokenizer.file_hash(
            tok_path
        )
        if change or not same_tokenizer:
            raise UserError(f"cannot resume {resume_from}: {change or 'the tokenizer changed'}")
        loaded = checkpoint.load(resume_from)
        model.load_state_dict(loaded.weights, strict=not cfg.tie_embeddings)
        extra = checkpoint.load_trainer_tensors(resume_from)
        groups = loaded.state.get("optimizer_param_groups")
        if groups:
            checkpoint.restore_optimizer(optimizer, extra, groups)
        checkpoint.restore_rng(extra)
        start_step = loaded.state["step"]
        tokens_seen = loaded.state.get("tokens_seen", 0)
        elapsed_before = loaded.state.get("elapsed_s", 0.0)
        old_train = loaded.state.get("train", {})
        changed = [
            k for k, v in dataclasses.asdict(t).items() if k in old_train and old_train[k] != v
        ]
        if changed:
            console.warn(f"resuming with changed train settings: {', '.join(changed)}")
        console.info(f"train: resuming from {resume_from} (step {start_step})")
        _truncate_metrics(run_dir / "metrics.jsonl", start_step)

    train_batches = data.Batches(
        data.load_shard(run_dir, "train", manifest), cfg.block_size, t.batch_size, recipe.seed
    )
    val_tokens = data.load_shard(run_dir, "val", manifest)
    if len(val_tokens) < 3:
        raise UserError("the validation split has fewer than 3 tokens; raise data.val_fraction")
    val_block = min(cfg.block_size, len(val_tokens) - 2)
    val_batches = data.Batches(val_tokens, val_block, t.batch_size, recipe.seed).eval_batches(
        t.eval_batches
    )
    if t.compile == "on" or (t.compile == "auto" and device.type == "cuda"):
        step_model = torch.compile(model)
    else:
        step_model = model

    tokens_per_step = t.batch_size * t.grad_accum * cfg.block_size
    n_params = model.num_params()
    console.info(
        f"train: {n_params / 1e6:.2f}M parameters, {device.type}"
        f"{' ' + str(amp).removeprefix('torch.') + ' autocast' if amp else ' fp32'}, "
        f"steps {start_step}->{t.max_steps}, {tokens_per_step:,} tokens/step"
    )

    commit = git_commit()

    def state(step: int, last: dict) -> dict:
        return {
            "tokens_seen": tokens_seen,
            "elapsed_s": round(elapsed_before + time.perf_counter() - started, 3),
            "data_position": step * t.grad_accum,
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
        return checkpoint.save(run_dir, step, model, optimizer, state(step, last), tok_path)

    metrics_file = open(run_dir / "metrics.jsonl", "a")
    started = time.perf_counter()
    window_start, window_tokens = started, 0
    last: dict = {}
    step = start_step
    model.train()
    try:
        with _SignalFlag() as flag, console.progress("loss", "lr", "rate") as bar:
            task = bar.add_task(
                "train", total=t.max_steps, completed=start_step, loss="", lr="", rate=""
            )
            while step < t.max_steps:
                lr = lr_at(step, t)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss_sum = torch.zeros((), device=device)
                for micro in range(t.grad_accum):
                    x, y = train_batches.get(step * t.grad_accum + micro)
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    with _autocast(device, amp):
                        _, loss = step_model(x, y)
                    (loss / t.grad_accum).backward()
                    loss_sum += loss.detach()
                if t.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                tokens_seen += tokens_per_step
                window_tokens += tokens_per_step

                is_last = step == t.max_steps
                do_eval = is_last or (t.eval_every and step % t.eval_every == 0)
                if step % t.log_every == 0 or do_eval or step == 1:
                    now = time.perf_counter()
                    record = {
                        "step": step,
                        "loss": round(loss_sum.item() / t.grad_accum, 5),
                        "lr": lr,
                        "tokens_per_s": round(window_tokens / max(now - window_start, 1e-9), 1),
                        "tokens_seen": tokens_seen,
                        "elapsed_s": round(elapsed_before + now - started, 3),
                    }
                    if do_eval and not is_last:
                        val_loss = evaluate(model, val_batches, device, amp)
                        record["val_loss"] = round(val_loss, 5)
                        record["val_bpb"] = round(bits_per_byte(val_loss, manifest), 5)
                    last = {**last, **record}
                    if is_last:
                        last_train_record = record
                    else:
                        metrics_file.write(json.dumps(record) + "\n")
                        metrics_file.flush()
                    window_start, window_tokens = time.perf_counter(), 0
                    rate = f"{record['tokens_per_s']:,.0f} tok/s"
                    bar.update(
                        task, loss=f"loss {record['loss']:.3f}", lr=f"lr {lr:.1e}", rate=rate
                    )
                    if not console.progress_enabled():
                        val = f" | val {record['val_loss']:.3f}" if "val_loss" in record else ""
                        console.info(
                            f"step {step}/{t.max_steps} | loss {record['loss']:.3f}{val} "
                            f"| lr {lr:.2e} | {rate}"
                        )
                bar.update(task, completed=step)

                if flag.signum is not None:
                    path = save(step, last)
                    code = 130 if flag.signum == signal.SIGINT else 143
                    raise Interrupted(code, f"interrupted at step {step}; saved {path}")
                if not is_last and t.save_every and step % t.save_every == 0:
                    save(step, last)
            # Final: save first (so a failing evaluation cannot lose the run), then evaluate.
            if step > start_step:
                final = save(step, last)
                val_loss = evaluate(model, val_batches, device, amp)
                last_train_record["val_loss"] = round(val_loss, 5)
                last_train_record["val_bpb"] = round(bits_per_byte(val_loss, manifest), 5)
                metrics_file.write(json.dumps(last_train_record) + "\n")
                last = {**last, **last_train_record}
            else:
                final = checkpoint.newest_in_run(run_dir)
                if not last and final is not None:
                    last = checkpoint.load(final).state.get("metrics", {})
                console.info(f"train: already at step {step} (raise train.max_steps to go on)")
    finally:
        metrics_file.close()

    summary = {
        "run_dir": str(run_dir),
        "checkpoint": str(final) if final else None,
        "step": step,
        "params": n_params,
        "train_loss": last.get("loss"),
        "val_loss": last.get("val_loss"),
        "val_bpb": last.get("val_bpb"),
        "unigram_bpb": round(manifest["val_unigram_bpb"], 5),
        "tokens_seen": tokens_seen,
        "elapsed_s": round(elapsed_before + time.perf_counter() - started, 2),
    }
    if summary["val_bpb"] is not None:
        console.info(
            f"done: val loss {summary['val_loss']:.4f} = {summary['val_bpb']:.3f} bits/byte; "
            f"unigram baseline {summary['unigram_bpb']:.3f} bits/byte "
            f"(ratio {summary['val_bpb'] / summary['unigram_bpb']:.2f}); saved {final}"
        )
    return summary


def new_run_dir(base: Path) -> Path:
    """--fresh: runs/<name>, or the first free runs/<name>-2, -3, ... (the old one is kept)."""
    if not base.exists() or not any(base.iterdir()):
        return base
    n = 2
    while (base.parent / f"{base.name}-{n}").exists():
        n += 1
    return base.parent / f"{base.name}-{n}"


def pretrain(recipe: Recipe, fresh: bool = False) -> dict:
    from gptcli import recipe as recipe_mod

    run_dir = recipe_mod.run_dir(recipe)
    if fresh:
        run_dir = new_run_dir(run_dir)
    with checkpoint.RunLock(run_dir):
        check_resumable(recipe, run_dir, None)
        manifest = data.prepare(recipe, run_dir)
        data.write_atomic(run_dir / "recipe.yaml", recipe_mod.dump(recipe).encode())
        vocab = manifest["vocab_size"]
        if recipe.model.vocab_size and recipe.model.vocab_size < vocab:
            raise UserError(
                f"model.vocab_size {recipe.model.vocab_size} is smaller than the tokenizer's "
                f"{vocab} tokens (use 0 to take the tokenizer's size)"
            )
        cfg = dataclasses.replace(recipe.model, vocab_size=recipe.model.vocab_size or vocab)
        return fit(recipe, run_dir, cfg, manifest)
