"""`gptcli inspect PATH`: explain a run folder, checkpoint, tokenizer, shard folder or recipe.

describe() returns plain data (what --json prints); render() turns it into tables for people.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from gptcli import checkpoint, console, tokenizer
from gptcli import recipe as recipe_mod
from gptcli.console import UserError

_LAYER = re.compile(r"^blocks\.\d+\.")


def param_counts(shapes: dict[str, list[int]], tied: bool) -> dict[str, int]:
    """Parameters per module kind, summed over layers; 'total' counts tied weights once."""
    groups: dict[str, int] = {}
    for name, shape in shapes.items():
        n = 1
        for d in shape:
            n *= d
        key = _LAYER.sub("blocks.*.", name).rsplit(".", 1)[0]
        key = key.replace("norm1", "norm").replace("norm2", "norm")
        groups[key] = groups.get(key, 0) + n
    if tied:
        groups.setdefault("lm_head", 0)  # shares wte's matrix
    groups["total"] = sum(v for k, v in groups.items())
    return groups


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def describe_checkpoint(path: Path) -> dict[str, Any]:
    loaded_cfg = checkpoint.model_config_from_json(path / "config.json")
    tensors = checkpoint.tensor_shapes(path / "model.safetensors")
    state = checkpoint.read_state(path)
    tok = tokenizer.load(path / "tokenizer.json")
    dtypes = sorted({dtype for _, dtype in tensors.values()})
    state.pop("optimizer_param_groups", None)
    return {
        "kind": "checkpoint",
        "path": str(path),
        "config": {k: v for k, v in checkpoint.config_json(loaded_cfg).items()},
        "params": param_counts({k: s for k, (s, _) in tensors.items()}, loaded_cfg.tie_embeddings),
        "dtypes": dtypes,
        "size_bytes": _dir_size(path),
        "step": state.get("step"),
        "tokens_seen": state.get("tokens_seen"),
        "metrics": state.get("metrics", {}),
        "versions": state.get("versions", {}),
        "tokenizer": {"vocab_size": tok.get_vocab_size()},
    }


def _last_metrics(path: Path) -> dict[str, Any]:
    last: dict[str, Any] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                last.update(json.loads(line))
    return last


def describe_run(path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": "run", "path": str(path)}
    if (path / "recipe.yaml").is_file():
        recipe = recipe_mod.load(path / "recipe.yaml")
        out["recipe"] = recipe_mod.to_dict(recipe)
        out["non_default_keys"] = recipe_mod.non_defaults(recipe)
    manifest_path = path / "data" / "manifest.json"
    if manifest_path.is_file():
        out["data"] = json.loads(manifest_path.read_text())
    ckpts = checkpoint.run_checkpoints(path)
    out["checkpoints"] = [c.name for c in ckpts]
    if ckpts:
        out["newest_checkpoint"] = describe_checkpoint(ckpts[-1])
    out["last_metrics"] = _last_metrics(path / "metrics.jsonl")
    return out


def describe_tokenizer(path: Path) -> dict[str, Any]:
    tok = tokenizer.load(path)
    return {"kind": "tokenizer", "path": str(path), **tokenizer.vocab_stats(tok)}


def describe_recipe(path: Path) -> dict[str, Any]:
    import dataclasses

    import torch

    from gptcli.model import GPT

    recipe = recipe_mod.load(path)
    cfg = dataclasses.replace(
        recipe.model, vocab_size=recipe.model.vocab_size or recipe.tokenizer.vocab_size
    )
    with torch.device("meta"):
        model = GPT(cfg)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    if cfg.tie_embeddings:
        shapes.pop("lm_head.weight")
    t = recipe.train
    return {
        "kind": "recipe",
        "path": str(path),
        "recipe": recipe_mod.to_dict(recipe),
        "non_default_keys": recipe_mod.non_defaults(recipe),
        "params": param_counts(shapes, cfg.tie_embeddings),
        "flops_per_token": model.flops_per_token(),
        "tokens_per_step": t.batch_size * t.grad_accum * cfg.block_size,
        "run_dir": str(recipe_mod.run_dir(recipe)),
    }


def describe_shards(path: Path) -> dict[str, Any]:
    manifest = json.loads((path / "manifest.json").read_text())
    return {"kind": "shards", "path": str(path), **manifest}


def describe(path_str: str) -> dict[str, Any]:
    path = Path(path_str)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    if path.is_dir():
        if (path / "model.safetensors").is_file():
            checkpoint.resolve(path)  # checks completeness
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


# --------------------------------------------------------------------------- rendering


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render(info: dict[str, Any]) -> None:
    from rich.table import Table

    out = console.stdout
    kind = info["kind"]
    out.print(f"[bold]{kind}[/bold] {info['path']}")

    def table(title: str, rows: dict[str, Any]) -> None:
        t = Table(title=title, title_justify="left", show_header=False, box=None, pad_edge=False)
        t.add_column(style="cyan")
        t.add_column()
        for k, v in rows.items():
            if not isinstance(v, (dict, list)):
                t.add_row(k, _fmt(v))
        out.print(t)

    if kind == "run":
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
                },
            )
        table("last metrics", info["last_metrics"])
        out.print(f"checkpoints: {', '.join(info['checkpoints']) or 'none'}")
        if "newest_checkpoint" in info:
            render(info["newest_checkpoint"])
    elif kind == "checkpoint":
        table("model config", info["config"])
        table("parameters", info["params"])
        table(
            "state",
            {
                "step": info["step"],
                "tokens seen": info["tokens_seen"],
                "size on disk": f"{info['size_bytes'] / 1e6:.1f} MB",
                "dtypes": ", ".join(info["dtypes"]),
                "tokenizer vocab": info["tokenizer"]["vocab_size"],
                **{f"metric {k}": v for k, v in info["metrics"].items()},
                **{f"{k} version": v for k, v in info["versions"].items()},
            },
        )
    elif kind == "recipe":
        table("recipe (keys that differ from the defaults)", info["non_default_keys"])
        table("parameters", info["params"])
        table(
            "cost",
            {
                "FLOPs per token (train)": info["flops_per_token"],
                "tokens per step": info["tokens_per_step"],
                "run folder": info["run_dir"],
            },
        )
    elif kind == "tokenizer":
        table("tokenizer", {"vocab size": info["vocab_size"]})
        out.print(f"special tokens: {', '.join(info['special_tokens'])}")
        out.print("longest tokens: " + ", ".join(repr(t) for t in info["longest_tokens"]))
    elif kind == "shards":
        table("train", info["train"])
        table("val", info["val"])
        table("shards", {"dtype": info["dtype"], "vocab size": info["vocab_size"]})
