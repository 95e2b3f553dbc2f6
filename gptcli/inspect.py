"""`gptcli inspect PATH`: explain a run folder, checkpoint, tokenizer, shard folder or recipe.

describe() returns plain data (what --json prints); render() turns it into tables for people.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table
from rich.text import Text

from gptcli import bundled, checkpoint, console, load, memory, tokenizer
from gptcli import recipe as recipe_mod
from gptcli.checkpoint_tensors import OptimizerState
from gptcli.console import UserError
from gptcli.data import curate, tokenize
from gptcli.data.manifest import read_manifest, read_manifest_file
from gptcli.files import atomic_target
from gptcli.hf_format import is_hf_folder
from gptcli.plan import param_counts, plan
from gptcli.tasks.lm import bits_per_byte


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def describe_hf(path: Path) -> dict[str, Any]:
    """A transformers folder, as gptcli reads it (converted in memory)."""
    loaded = load.load(path)
    tok = tokenizer.load(path / "tokenizer.json")
    shapes = {k: list(v.shape) for k, v in loaded.weights.items()}
    return {
        "kind": "checkpoint",
        "source": "hf",
        "path": str(path),
        "config": checkpoint.config_json(loaded.config),
        "params": param_counts(shapes, loaded.config.tie_embeddings),
        "dtypes": ["F32"],
        "size_bytes": _dir_size(path),
        "step": None,
        "tokens_seen": None,
        "metrics": {},
        "versions": {},
        "tokenizer": {"vocab_size": tok.get_vocab_size()},
    }


def describe_checkpoint(path: Path) -> dict[str, Any]:
    if is_hf_folder(path):
        return describe_hf(path)
    loaded_cfg = checkpoint.model_config_from_json(path / "config.json")
    tensors = checkpoint.tensor_shapes(path / "model.safetensors")
    state = checkpoint.read_state(path)
    tok = tokenizer.load(path / "tokenizer.json")
    dtypes = sorted({dtype for _, dtype in tensors.values()})
    state.pop("optimizer_param_groups", None)
    info = checkpoint.read_info(path)
    extra: dict[str, Any] = {"task": info["task"]}
    if "lora" in info:  # model.safetensors holds the adapters; the rest is the base's
        extra["lora"] = info["lora"]
    return {
        "kind": "checkpoint",
        "path": str(path),
        **extra,
        "config": checkpoint.config_json(loaded_cfg, info),
        "params": param_counts({k: s for k, (s, _) in tensors.items()}, loaded_cfg.tie_embeddings),
        "dtypes": dtypes,
        "size_bytes": _dir_size(path),
        "step": state.get("step"),
        "tokens_seen": state.get("tokens_seen"),
        "metrics": state.get("metrics", {}),
        "versions": state.get("versions", {}),
        "tokenizer": {"vocab_size": tok.get_vocab_size()},
        "layout": checkpoint_layout(path, state),
    }


def checkpoint_layout(path: Path, state: dict[str, Any]) -> dict[str, Any]:
    """Where the weights and the optimizer state live: whole, or sharded over the ranks."""
    saved = OptimizerState(path)
    files = [f.name for f in saved.files if f.is_file()] if saved.names() else []
    sharding = f"sharded over {saved.world} ranks" if saved.world > 1 else "whole"
    return {
        "weights": "model.safetensors (whole: read without torchrun)",
        "optimizer": sharding if files else "none",
        "optimizer files": files,
        "optimizer MB": round(sum((path / f).stat().st_size for f in files) / 1e6, 3),
        "global batch": state.get("global_batch"),
    }


def _records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                raise UserError(f"{path}: line {n} is not valid JSON") from None
    return out


def _last_metrics(records: list[dict[str, Any]]) -> dict[str, Any]:
    last: dict[str, Any] = {}
    for r in records:
        last.update(r)
    return last


def loss_curve(records: list[dict[str, Any]]) -> dict[str, list[list[float]]]:
    return {
        "train": [[r["step"], r["loss"]] for r in records if "loss" in r],
        "val": [[r["step"], r["val_loss"]] for r in records if "val_loss" in r],
    }


def describe_run(path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": "run", "path": str(path)}
    if (path / "recipe.yaml").is_file():
        recipe = recipe_mod.load(path / "recipe.yaml")
        out["recipe"] = recipe_mod.to_dict(recipe)
        out["non_default_keys"] = recipe_mod.non_defaults(recipe)
    manifest = read_manifest(path)
    if manifest is not None:
        out["data"] = manifest
    removed = curate.read_removed(path)
    if removed is not None:
        out["removed"] = {
            "by_reason": curate.totals_by_reason(removed["removed"]),
            "by_source": removed["removed"],
        }
    ckpts = checkpoint.run_checkpoints(path)
    out["checkpoints"] = [c.name for c in ckpts]
    if ckpts:
        out["newest_checkpoint"] = describe_checkpoint(ckpts[-1])
    records = _records(path / "metrics.jsonl")
    last = _last_metrics(records)
    if "data" in out and "loss" in last:
        train = out["data"]["train"]
        last["train_bpb"] = round(bits_per_byte(last["loss"], train["tokens"], train["bytes"]), 5)
    rates = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    if rates:
        last["mean_tokens_per_s"] = round(sum(rates) / len(rates), 1)
    out["last_metrics"] = last
    out["curve"] = loss_curve(records)
    report = memory.load(path)
    if report is not None:
        out["memory"] = report
    out["evals"] = eval_results(path / "eval")
    return out


def eval_results(folder: Path) -> list[dict[str, Any]]:
    """The results `gptcli eval` kept in a run's eval/ folder, oldest first: file, metrics."""
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            result = json.loads(path.read_text())
            rows = [
                {k: r.get(k) for k in ("task", "metric", "value", "stderr")}
                for r in result["results"]
            ]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            console.warn(f"inspect: {path} is not a gptcli eval result; skipped")
            continue
        found.append({"file": path.name, "model": result.get("model"), "results": rows})
    return found


def _val_sample(tok_path: Path, n_tokens: int = 20_000) -> tuple[str, str] | None:
    """Text decoded from the first tokens of the run's val shard, if tok_path is in a run."""
    for folder in (tok_path.parent, tok_path.parent.parent.parent):
        manifest = folder / "data" / "manifest.json"
        val = folder / "data" / "val.bin"
        if manifest.is_file() and val.is_file():
            dtype = np.dtype(read_manifest_file(manifest)["dtype"])
            ids = np.fromfile(val, dtype=dtype, count=n_tokens)
            return str(val), tokenizer.decode(tokenizer.load(tok_path), ids.tolist())
    return None


def describe_tokenizer(path: Path, text: str | None = None) -> dict[str, Any]:
    tok_path = tokenizer.resolve_path(path)
    tok = tokenizer.load(tok_path)
    out: dict[str, Any] = {"kind": "tokenizer", "path": str(tok_path), **tokenizer.vocab_stats(tok)}
    sample = ("--text", text) if text is not None else _val_sample(tok_path)
    if sample is not None and sample[1]:
        ids = tok.encode(sample[1], add_special_tokens=False).ids
        out["bytes_per_token"] = round(len(sample[1].encode()) / max(len(ids), 1), 3)
        out["bytes_per_token_on"] = sample[0]
    if text is not None:
        # Byte-level tokens may split one character; its text goes to the first of them, so
        # the pieces always concatenate back to exactly the input text.
        enc = tok.encode(text, add_special_tokens=False)
        pieces, done = [], 0
        for i, (a, b) in zip(enc.ids, enc.offsets, strict=True):
            pieces.append({"id": i, "text": text[max(a, done) : b]})
            done = max(done, b)
        out["pieces"] = pieces
    return out


def describe_recipe(path: Path) -> dict[str, Any]:
    """A recipe and what pretraining it would cost (the plan `pretrain --dry-run` prints)."""
    recipe = recipe_mod.load(path)
    return {
        "kind": "recipe",
        "path": str(path),
        "recipe": recipe_mod.to_dict(recipe),
        "non_default_keys": recipe_mod.non_defaults(recipe),
        **plan(recipe),
    }


def sample_row(manifest: dict) -> dict[str, str]:
    """A row saying the shards hold only the start of the corpus, when data.max_tokens cut it."""
    if not manifest.get("stopped_early"):
        return {}
    return {"sample": f"first {manifest['max_tokens']:,} tokens (data.max_tokens)"}


def describe_shards(path: Path, top: int = 10, sample: int = 5_000_000) -> dict[str, Any]:
    """Token counts and dtype from the manifest; the most frequent ids from the train shard."""
    manifest = read_manifest_file(path / "manifest.json")
    dtype = np.dtype(manifest["dtype"])
    out: dict[str, Any] = {"kind": "shards", "path": str(path), **manifest}
    train = path / "train.bin"
    if train.is_file():
        ids = np.fromfile(train, dtype=dtype, count=sample)
        counts = np.bincount(ids, minlength=1)
        order = np.argsort(-counts, kind="stable")[:top]
        tok_path = path.parent / "tokenizer.json"
        tok = tokenizer.load(tok_path) if tok_path.is_file() else None
        out["most_frequent"] = [
            {
                "id": int(i),
                "text": tokenizer.decode(tok, [int(i)]) if tok else None,
                "count": int(counts[i]),
                "share": round(float(counts[i]) / max(len(ids), 1), 4),
            }
            for i in order
            if counts[i]
        ]
        out["most_frequent_sample_tokens"] = int(len(ids))
    return out


def describe(path_str: str, text: str | None = None) -> dict[str, Any]:
    """What PATH is, as plain data; text (--text) asks for the tokenizer view of PATH."""
    path = Path(path_str)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    if text is not None:
        if path.is_dir() and not (path / "tokenizer.json").is_file():
            raise UserError(f"{path}: --text needs a tokenizer.json, run or checkpoint folder")
        return describe_tokenizer(path, text)
    if path.is_dir():
        if (path / "model.safetensors").is_file():
            load.resolve(path)  # checks completeness (an HF folder has its own files)
            return describe_checkpoint(path)
        if (path / "recipe.yaml").is_file() or (path / "checkpoints").is_dir():
            return describe_run(path)
        if (path / "manifest.json").is_file():
            return describe_shards(path)
        raise UserError(f"{path}: not a run folder, checkpoint or shard folder")
    if path.suffix in (".yaml", ".yml"):
        return describe_recipe(path)
    if path.suffix == ".json":
        return describe_tokenizer(path)
    raise UserError(f"{path}: not a recipe (.yaml), tokenizer (.json), run or checkpoint")


def describe_removed(path_str: str, reason: str) -> dict[str, Any]:
    """inspect RUN --removed REASON: the first documents curation removed for that reason."""
    path = Path(path_str)
    if not path.is_dir():
        raise UserError(f"{path}: --removed needs a run folder")
    removed = curate.read_removed(path)
    if removed is None:
        raise UserError(
            f"{path}: no document was removed by curation (data.dedup, data.filters and "
            "data.decontaminate were off, or it was not tokenized since)"
        )
    totals = curate.totals_by_reason(removed["removed"])
    if reason not in curate.REASONS:
        raise UserError(
            f"--removed {reason!r}: not a reason; the reasons are {', '.join(curate.REASONS)}"
        )
    examples = removed["examples"].get(reason, [])
    if not examples:
        there = ", ".join(f"{r} ({v['documents']:,})" for r, v in totals.items()) or "none"
        raise UserError(f"{path}: nothing was removed as {reason} (removed: {there})")
    return {
        "kind": "removed",
        "path": str(path),
        "reason": reason,
        "removed": totals.get(reason, {"documents": 0, "bytes": 0}),
        "examples": examples,
    }


# --------------------------------------------------------------------------- bundled recipes


def bundled_or_path(path: str) -> str:
    """PATH, or the bundled recipe it names when nothing of that name is here."""
    found = None if Path(path).exists() else bundled.find(path)
    if found is None:
        return path
    bundled.say_which(path, found)
    return str(found)


def bundled_recipes() -> dict[str, Any]:
    """The recipes that ship with gptcli: name, what it trains (its first comment line), the
    data it reads."""
    rows = [
        {
            "name": name,
            "file": str(path),
            "summary": bundled.summary(path),
            "data": bundled.data_needed(recipe_mod.load(path)),
        }
        for name, path in bundled.names().items()
    ]
    return {"kind": "recipes", "path": str(bundled.FOLDER), "recipes": rows}


def recipe_lines(info: dict[str, Any]) -> list[str]:
    """One line per bundled recipe, names aligned."""
    width = max((len(r["name"]) for r in info["recipes"]), default=0)
    return [f"{r['name']:<{width}}  {r['summary']}  data: {r['data']}" for r in info["recipes"]]


# --------------------------------------------------------------------------- the loss curve


def ascii_curve(curve: dict[str, list], width: int = 60, height: int = 12) -> list[str]:
    """Train (·) and val (o) loss against steps as text lines, y labelled, x from first step."""
    points = [(s, v, "·") for s, v in curve["train"]] + [(s, v, "o") for s, v in curve["val"]]
    if not points:
        return []
    steps = [p[0] for p in points]
    values = [p[1] for p in points]
    s0, s1, lo, hi = min(steps), max(steps), min(values), max(values)
    grid = [[" "] * width for _ in range(height)]
    for step, value, mark in points:
        x = round((step - s0) / max(s1 - s0, 1) * (width - 1))
        y = round((hi - value) / max(hi - lo, 1e-12) * (height - 1))
        cell = grid[y][x]
        grid[y][x] = mark if cell in (" ", mark) else "*"
    labels = {0: hi, height // 2: (hi + lo) / 2, height - 1: lo}
    lines = [f"{labels[r]:>8.3f} |" if r in labels else " " * 8 + " |" for r in range(height)]
    lines = [label + "".join(row) for label, row in zip(lines, grid, strict=True)]
    lines.append(" " * 9 + "+" + "-" * width)
    lines.append(" " * 10 + f"{s0:<{width // 2}}" + f"{'step ' + str(s1):>{width - width // 2}}")
    return lines


def plot_png(curve: dict[str, list], out: str, title: str) -> str:
    """Write the loss curve as a PNG (atomically); matplotlib is the optional `plot` extra."""
    if not out.lower().endswith(".png"):
        raise UserError(f"--plot: {out} should end in .png")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError(
            "--plot needs matplotlib: pip install 'gptcli[plot]' (the terminal curve needs nothing)"
        ) from None
    if not curve["train"]:
        raise UserError("--plot: this run has no metrics yet (metrics.jsonl is empty)")
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for name, marker in (("train", "-"), ("val", "o-")):
        if curve[name]:
            xs, ys = zip(*curve[name], strict=True)
            ax.plot(xs, ys, marker, label=f"{name} loss", markersize=4)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    target = Path(out)
    try:
        with console.writing(f"--plot {target}"):
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_target(target) as tmp:
                fig.savefig(tmp, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)
    return str(target)


# --------------------------------------------------------------------------- rendering


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(title: str, rows: dict[str, Any]) -> None:
    """Two columns, key and value, for the plain values of rows (nested ones are skipped)."""
    t = Table(title=title, title_justify="left", show_header=False, box=None, pad_edge=False)
    t.add_column(style="cyan")
    t.add_column()
    for k, v in rows.items():
        if isinstance(v, list) and all(not isinstance(x, (dict, list)) for x in v):
            t.add_row(k, ", ".join(_fmt(x) for x in v) or "[]")
        elif not isinstance(v, (dict, list)):
            t.add_row(k, _fmt(v))
    console.stdout.print(t)


def render_run(info: dict[str, Any]) -> None:
    """A run: recipe keys, data, last metrics, the loss curve, its newest checkpoint."""
    out = console.stdout
    if "non_default_keys" in info:
        table("recipe (keys that differ from the defaults)", info["non_default_keys"])
    if "data" in info:
        d = info["data"]
        table(
            "data",
            {
                "source": d["corpus"].get("source"),
                "train tokens": d["train"]["tokens"],
                "val tokens": d["val"]["tokens"],
                "vocab size": d["vocab_size"],
                "dtype": d["dtype"],
                "unigram bits/byte (val)": d["val_unigram_bpb"],
                **sample_row(d),
            },
        )
        if d.get("sources"):
            table("sources read", {e["source"]: tokenize.describe_source(e) for e in d["sources"]})
    if "removed" in info:
        gone = info["removed"]["by_reason"]
        rows = {
            r: f"{v['documents']:,} documents ({v['bytes'] / 1e6:,.2f} MB)" for r, v in gone.items()
        }
        table("removed by curation (inspect RUN --removed REASON shows examples)", rows or {"-": 0})
    table("last metrics", info["last_metrics"])
    if "memory" in info:
        render_memory(info["memory"])
    lines = ascii_curve(info.get("curve", {"train": [], "val": []}))
    if lines:
        out.print("[bold]loss[/bold] ([cyan]· train[/cyan], [magenta]o val[/magenta])")
        for line in lines:
            styled = line.replace("·", "[cyan]·[/cyan]").replace("o", "[magenta]o[/magenta]")
            out.print(styled, highlight=False)
    for ev in info.get("evals", []):
        scores = {
            f"{r['task']} {r['metric']}": "-" if r["value"] is None else f"{r['value']:.4f}"
            for r in ev["results"]
        }
        table(f"eval {ev['file']} ({Path(ev['model'] or '').name})", scores)
    out.print(f"checkpoints: {', '.join(info['checkpoints']) or 'none'}")
    if "newest_checkpoint" in info:
        render(info["newest_checkpoint"])


def render_memory(report: dict[str, Any]) -> None:
    """The memory report the run recorded before its first step (and the measured peak)."""
    per_rank = " per rank" if report.get("ranks", 1) > 1 else ""
    if report.get("sharded"):
        per_rank += f" (parameters, gradients, optimizer sharded over {report['ranks']} ranks)"
    rows = {k: memory.mib(report[k]) for k in ("parameters", "gradients", "optimizer")}
    if "ddp_buckets" in report:
        rows["DDP buckets"] = memory.mib(report["ddp_buckets"])
    if "gathered" in report:
        rows["gathered whole by FSDP (root, two blocks)"] = memory.mib(report["gathered"])
    batch, length = report["micro_batch"]
    for mode, n in report["activations"].items():
        using = " (this run)" if mode == report["activation_checkpointing"] else ""
        rows[f"activations, checkpointing {mode.replace('_', ' ')}{using}"] = memory.mib(n)
    if report.get("recompute"):
        rows["one block recomputed in backward"] = memory.mib(report["recompute"])
    rows["total (estimate)"] = memory.mib(report["total"])
    if "peak_allocated" in report:
        rows["peak allocated, first step (measured)"] = memory.mib(report["peak_allocated"])
    table(f"memory{per_rank}, micro-batch {batch}x{length}", rows)


def render_checkpoint(info: dict[str, Any]) -> None:
    """A checkpoint: config, task, LoRA, parameters and state."""
    table("model config", info["config"])
    task = info.get("task", {"kind": "lm"})
    if task.get("kind") != "lm":
        table("task", task)
    if "lora" in info:
        lora = info["lora"]
        table(
            "LoRA adapters (parameters below are the stored adapters and head)",
            {
                "rank": lora["rank"],
                "alpha": lora["alpha"],
                "targets": ", ".join(lora["targets"]),
                "base": lora["base"]["path"],
                "base sha256": lora["base"]["sha256"][:16] + "...",
            },
        )
    table("parameters", info["params"])
    layout = info["layout"]
    table(
        "layout (resumes on any number of ranks that divides the global batch)",
        {**layout, "optimizer files": ", ".join(layout["optimizer files"]) or "-"},
    )
    table(
        "state",
        {
            "step": info["step"],
            "tokens seen": info["tokens_seen"],
            "size on disk": f"{info['size_bytes'] / 1e6:.1f} MB",
            "dtypes": ", ".join(info["dtypes"]),
            "tokenizer vocab": info["tokenizer"]["vocab_size"],
            **{f"metric {k}": v for k, v in info["metrics"].items()},
            **{
                ("git commit" if k == "git" else f"{k} version"): v
                for k, v in info["versions"].items()
            },
        },
    )


def render_recipe(info: dict[str, Any]) -> None:
    """A recipe: its keys, then the plan of training it."""
    table("recipe (keys that differ from the defaults)", info["non_default_keys"])
    render_plan(info)


def duration(seconds: float) -> str:
    """Seconds as people read a run's length."""
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:,.1f} min"
    return f"{seconds / 3600:,.1f} h"


def render_plan(info: dict[str, Any]) -> None:
    """The plan (pretrain/finetune --dry-run, inspect RECIPE): size, tokens, FLOPs, memory,
    what auto decides, time here and on a named GPU, and whether the real run would start."""
    table("parameters", info["params"])
    data = info["data"]
    table(f"data ({data['status']})", {k: v for k, v in data.items() if k != "status"})
    table(
        "work",
        {
            "tokens per step": info["tokens_per_step"],
            "steps": info["max_steps"],
            "tokens in all": info["tokens_total"],
            "FLOPs per token (train)": info["flops_per_token"],
            "FLOPs in all": f"{info['flops_total']:.3g}",
        },
    )
    render_memory(info["memory"])
    totals = {
        f"total, checkpointing {k.replace('_', ' ')}": memory.mib(n)
        for k, n in info["memory_totals"].items()
    }
    available = info["memory_available"]
    if available:
        totals["available"] = f"{memory.mib(available['bytes'])} ({available['limit']})"
    table("memory per device", totals)
    auto = info["auto"]
    here: dict[str, Any] = {"dtype": auto["dtype"]}
    if info["step_s"] is None:
        here["time"] = info["compile_reason"]
    else:
        here.update(
            {
                "compile": f"{'on' if auto['compile'] else 'off'} ({info['compile_reason']})",
                "timed steps": f"{info['probe_tokens_per_s']:,.0f} tokens/s",
                "seconds per step": info["step_s"],
                "estimated train time": duration(info["estimated_train_s"]),
            }
        )
    here["run folder"] = info["run_dir"]
    table(f"on this machine ({auto['device']})", here)
    if "on" in info:
        gpu = info["on"]
        table(
            f"on one {gpu['card']} (estimate)",
            {
                "tokens/s": f"{gpu['tokens_per_s']:,.0f} (bf16, MFU {gpu['mfu']:.0%}: "
                f"{gpu['mfu_source']})",
                "estimated train time": duration(gpu["estimated_train_s"]),
                "memory (bf16)": f"{memory.mib(gpu['memory_total'])} of "
                f"{memory.mib(gpu['memory_bytes'])}" + ("" if gpu["fits"] else ": does not fit"),
            },
        )
    if info["refusal"]:
        console.stdout.print(
            f"[bold red]the run would not start here:[/bold red] {info['refusal']}"
        )
    elif info["memory_fits"] is False:
        console.stdout.print("[yellow]memory: over what is available (memory_check is off)[/]")


def render_tokenizer(info: dict[str, Any]) -> None:
    """A tokenizer: vocabulary, special and longest tokens, a coloured split."""
    out = console.stdout
    rows = {"vocab size": info["vocab_size"]}
    if "bytes_per_token" in info:
        rows[f"bytes/token ({info['bytes_per_token_on']})"] = info["bytes_per_token"]
    table("tokenizer", rows)
    out.print(f"special tokens: {', '.join(info['special_tokens'])}")
    out.print("longest tokens: " + ", ".join(repr(t) for t in info["longest_tokens"]))
    if "pieces" in info:
        styles = ("black on cyan", "black on yellow", "black on green", "black on magenta")
        view = Text()
        for n, piece in enumerate(info["pieces"]):
            view.append(piece["text"], style=styles[n % len(styles)])
        out.print(f"{len(info['pieces'])} tokens:")
        out.print(view)
        out.print(" ".join(str(p["id"]) for p in info["pieces"]))


def render_shards(info: dict[str, Any]) -> None:
    """A shard folder: token counts and the most frequent tokens."""
    out = console.stdout
    table("train", info["train"])
    table("val", info["val"])
    table("shards", {"dtype": info["dtype"], "vocab size": info["vocab_size"]})
    if info.get("most_frequent"):
        top = ", ".join(f"{t['text']!r} {t['share']:.1%}" for t in info["most_frequent"])
        out.print(f"most frequent (train): {top}")


def render_score(info: dict[str, Any]) -> None:
    """inspect --score: loss, bits per byte and perplexity on a file."""
    table(
        f"score on {info['file']}",
        {k: info[k] for k in ("tokens", "bytes", "loss", "bits_per_byte", "perplexity")},
    )


def render_removed(info: dict[str, Any]) -> None:
    """inspect RUN --removed REASON: each example's number, source and text."""
    out, gone = console.stdout, info["removed"]
    out.print(
        f"{gone['documents']:,} documents ({gone['bytes'] / 1e6:,.2f} MB) removed as "
        f"{info['reason']}; the first {len(info['examples'])}:"
    )
    for ex in info["examples"]:
        copy = f", a copy of document {ex['copy_of']:,}" if "copy_of" in ex else ""
        head = f"document {ex['document']:,} of {ex['source']} ({ex['bytes']:,} bytes{copy})"
        out.print(f"\n[bold]{head}[/bold]", highlight=False)
        cut = " [...]" if ex["bytes"] > len(ex["text"].encode("utf-8", "replace")) else ""
        out.print(Text(ex["text"] + cut), highlight=False)


def render(info: dict[str, Any]) -> None:
    """describe()'s data as tables for people, on stdout."""
    if info["kind"] == "recipes":  # one plain line each, for people and for grep
        for line in recipe_lines(info):
            console.out(line)
        return
    console.stdout.print(f"[bold]{info['kind']}[/bold] {info['path']}")
    RENDERERS[info["kind"]](info)


RENDERERS = {
    "run": render_run,
    "checkpoint": render_checkpoint,
    "recipe": render_recipe,
    "plan": render_plan,
    "tokenizer": render_tokenizer,
    "shards": render_shards,
    "score": render_score,
    "removed": render_removed,
}
