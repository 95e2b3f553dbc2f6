"""Recipes: one typed object that flows from YAML to the data pipeline, the model and the trainer.

Every key has a default, so a recipe states only what differs. Loading validates types and
values and names the closest valid key on a typo; `--set a.b=v` overrides use the same path.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from gptcli.console import UserError

# The document separator: every corpus, tokenizer and prompt uses it.
EOT = "<|endoftext|>"


@dataclass
class DataConfig:
    # builtin:NAME | hf:OWNER/NAME (a Hub dataset) | a file, directory or glob | an http(s)
    # URL | "-" (stdin), or a list of these, each a string or {path: ..., weight: 1.0,
    # sha256: ..., text_field: ...}; an hf: source's mapping also takes config, split (train)
    # and revision
    source: str | list | dict = "builtin:stories"
    text_field: str = "text"  # the field (column) that holds a document in .jsonl/.csv/.parquet
    sha256: str = ""  # expected sha256 of a URL source's download ("" = not checked)
    errors: Literal["strict", "replace"] = "strict"  # bytes that are not UTF-8
    val_fraction: float = 0.05
    builtin_mb: float = 8.0  # how much text a builtin: corpus generates
    # a separate evaluation set (else val_fraction of the source): a file, URL or hf: dataset,
    # as a string or in the source's mapping form, e.g. {path: hf:OWNER/NAME, split: validation}
    dev: str | dict = ""
    max_download_mb: float = 10240.0  # a URL source larger than this is refused
    allow_html: bool = False  # a URL that serves an HTML page is refused unless this is true
    max_tokens: int = 0  # stop after this many tokens, train + val, whole documents (0 = all)


@dataclass
class TokenizerConfig:
    vocab_size: int = 4096
    special_tokens: list[str] = field(default_factory=lambda: [EOT])
    min_frequency: int = 2
    train_bytes: int = 300_000_000  # larger corpora train the BPE on a sample of this size


@dataclass
class ModelConfig:
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    block_size: int = 256
    vocab_size: int = 0  # 0 = the tokenizer's vocabulary size
    preset: Literal["", "gpt2", "llama"] = ""  # fills the switches below unless set explicitly
    positions: Literal["learned", "rope"] = "learned"
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    mlp: Literal["gelu", "swiglu", "relu2"] = "gelu"
    mlp_hidden: int = 0  # 0 = 4 * n_embd (gelu, relu2) or 8/3 * n_embd rounded up to 64 (swiglu)
    bias: bool = True
    tie_embeddings: bool = True
    qk_norm: bool = False  # RMSNorm on queries and keys of each head
    zero_init_proj: bool = False  # residual output projections start at zero
    dropout: float = 0.0
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    n_classes: int = 0  # > 0: a linear head on the final hidden state (set by task: classify)


# Model keys that only change how the model trains; every other one changes its shape.
NON_SHAPE_KEYS = {"dropout"}


def shape_change(old: ModelConfig, new: ModelConfig) -> str | None:
    """The first model key that makes new a different shape from old, said for a message."""
    for f in dataclasses.fields(ModelConfig):
        if f.name not in NON_SHAPE_KEYS and getattr(old, f.name) != getattr(new, f.name):
            return f"model.{f.name} was {getattr(old, f.name)!r}, now {getattr(new, f.name)!r}"
    return None


# Architecture presets: GPT-2's choices, and the Llama family's (both exportable to HF).
PRESETS: dict[str, dict[str, Any]] = {
    "gpt2": {"positions": "learned", "norm": "layernorm", "mlp": "gelu", "bias": True},
    "llama": {"positions": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False},
}


@dataclass
class TrainConfig:
    batch_size: int = 32
    grad_accum: int = 1
    max_steps: int = 2000
    lr: float = 1.0e-3
    min_lr_ratio: float = 0.1  # the cosine schedule ends at lr * min_lr_ratio
    warmup_steps: int = 100
    lr_schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    decay_fraction: float = 0.2  # wsd: the final share of steps that decays to min_lr
    optimizer: Literal["adamw", "muon"] = "adamw"
    muon_lr: float = 0.02  # muon: learning rate of the hidden matrices
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 = no clipping
    eval_every: int = 200
    eval_batches: int = 20
    save_every: int = 500
    keep_last: int = 0  # keep only the newest N checkpoints (0 = keep all)
    log_every: int = 10
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    dtype: Literal["auto", "fp32", "bf16"] = "auto"
    compile: Literal["auto", "on", "off"] = "auto"
    # recompute blocks in backward instead of keeping their activations: every block (true),
    # every other block (selective) or none (false)
    activation_checkpointing: Literal[False, True, "selective"] = False
    # where metrics go: jsonl (metrics.jsonl, always) plus any of tensorboard, wandb, mlflow
    loggers: list[str] = field(default_factory=lambda: ["jsonl"])
    # under torchrun: ddp copies the model to every rank, fsdp shards it; auto picks fsdp when
    # the training state (16 bytes a parameter) passes 60% of one device's free memory
    parallel: Literal["auto", "ddp", "fsdp"] = "auto"


LOGGERS = ("jsonl", "tensorboard", "wandb", "mlflow")


@dataclass
class TensorBoardConfig:
    log_dir: str = ""  # "" = <run folder>/tensorboard


@dataclass
class WandbConfig:
    project: str = ""  # "" = $WANDB_PROJECT, else gptcli
    entity: str = ""  # "" = $WANDB_ENTITY, else the account's default
    mode: Literal["", "online", "offline", "disabled"] = ""  # "" = $WANDB_MODE, else online


@dataclass
class MlflowConfig:
    tracking_uri: str = ""  # "" = $MLFLOW_TRACKING_URI, else sqlite:///<run folder>/mlflow.db
    experiment: str = ""  # "" = $MLFLOW_EXPERIMENT_NAME, else gptcli


@dataclass
class TrackersConfig:
    """Settings of the trackers train.loggers names; each honours its own environment."""

    tensorboard: TensorBoardConfig = field(default_factory=TensorBoardConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)


@dataclass
class SampleConfig:
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int = 50
    top_p: float = 1.0
    min_p: float = 0.0  # 0 = off; else drop tokens below min_p * the likeliest token's probability
    repetition_penalty: float = 1.0  # 1 = off; > 1 discourages tokens already in the text
    stop: list[str] = field(default_factory=list)  # stop before any of these strings


@dataclass
class TaskConfig:
    """What finetune trains for. classify follows GPT-1: each example becomes one token sequence
    (start, delimiter, extract tokens), a linear head reads the extract token's final state."""

    kind: Literal["lm", "sft", "classify"] = "lm"
    format: Literal["single", "pair", "similarity", "choice"] = "single"  # classify inputs
    # the fields that hold the texts, in order ([] = the defaults of the format: single [text],
    # pair [premise, hypothesis], similarity [sentence1, sentence2], choice [context, choices];
    # sft [prompt, response], or a `messages` list of {role, content})
    fields: list[str] = field(default_factory=list)
    label_field: str = "label"
    label_names: list[str] = field(default_factory=list)  # names of labels 0..n-1 ([] = learned)
    lm_weight: float = 0.5  # classify: weight of the auxiliary language-model loss (GPT-1's λ)


DEFAULT_FIELDS = {
    "single": ["text"],
    "pair": ["premise", "hypothesis"],
    "similarity": ["sentence1", "sentence2"],
    "choice": ["context", "choices"],
    "sft": ["prompt", "response"],
}


def task_fields(task: TaskConfig) -> list[str]:
    """The fields that hold a task's texts, in order: task.fields or its format's defaults."""
    key = "sft" if task.kind == "sft" else task.format
    fields = task.fields or DEFAULT_FIELDS[key]
    need = 2 if key in ("pair", "similarity", "choice", "sft") else 1
    if len(fields) != need:
        what = "field" if need == 1 else "fields"
        raise UserError(f"task.fields for {key} needs {need} {what}, got {fields}")
    return fields


@dataclass
class LoraConfig:
    rank: int = 0  # 0 = no LoRA: every weight trains
    alpha: float = 16.0  # the update is scaled by alpha / rank
    dropout: float = 0.0
    # linear layers that get adapters, by name (attention: qkv, proj; MLP: up, gate, down)
    targets: list[str] = field(default_factory=lambda: ["qkv", "proj", "up", "gate", "down"])


@dataclass
class FinetuneConfig:
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class Recipe:
    name: str = "run"
    seed: int = 1337
    run_dir: str = ""  # "" = runs/<name>; a path on purpose, used as given (name is a plain name)
    init: str = ""  # finetune: the checkpoint or run folder to start from
    task: TaskConfig = field(default_factory=TaskConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    trackers: TrackersConfig = field(default_factory=TrackersConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    # Not a recipe key: the dotted keys the file and --set gave, so a finetune can tell a
    # model key the user asked for from one left at its default.
    given: frozenset[str] = field(default=frozenset(), compare=False, repr=False)


NOT_KEYS = {"given"}


# --------------------------------------------------------------------------- building from dicts


def all_keys(cls: type = Recipe, prefix: str = "") -> list[str]:
    """Every dotted key a recipe accepts, for error suggestions and `inspect`."""
    keys = []
    for f in dataclasses.fields(cls):
        if f.name in NOT_KEYS:
            continue
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            keys.extend(all_keys(hint, f"{prefix}{f.name}."))
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


# Names users bring from other tools, mapped to ours, for "closest valid key" hints.
_ALIASES = {
    "learning_rate": "lr",
    "n_layers": "n_layer",
    "num_layers": "n_layer",
    "n_heads": "n_head",
    "num_heads": "n_head",
    "d_model": "n_embd",
    "hidden_size": "n_embd",
    "context_length": "block_size",
    "seq_len": "block_size",
    "steps": "max_steps",
    "max_iters": "max_steps",
    "warmup_iters": "warmup_steps",
    "gradient_accumulation_steps": "grad_accum",
}


def _closest(key: str) -> str:
    keys = all_keys()
    section, _, last = key.rpartition(".")
    last = _ALIASES.get(last, last)
    same_section = [k for k in keys if k.rpartition(".")[0] == section]
    names = {k.rpartition(".")[2]: k for k in same_section}
    hit = difflib.get_close_matches(last, list(names), n=1, cutoff=0.5)
    if hit:
        return f"; closest valid key: {names[hit[0]]}"
    match = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
    return f"; closest valid key: {match[0]}" if match else ""


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        names = (str(a).lower() if isinstance(a, bool) else repr(a) for a in typing.get_args(hint))
        return "one of " + ", ".join(names)
    if typing.get_origin(hint) is list:
        return f"a list of {typing.get_args(hint)[0].__name__}"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        hint, str(hint)
    )


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check one leaf value against its type hint; ints are accepted where floats are."""
    origin = typing.get_origin(hint)
    ok = False
    if origin is Literal:
        if isinstance(value, bool) and "on" in typing.get_args(hint):
            value = "on" if value else "off"  # YAML 1.1 reads a bare on/off as a boolean
        # by type too: 0 and 1 are not false and true
        ok = any(type(value) is type(a) and value == a for a in typing.get_args(hint))
    elif origin is list:
        (item,) = typing.get_args(hint)
        ok = isinstance(value, list) and all(isinstance(v, item) for v in value)
        value = list(value) if ok else value
    elif hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    elif isinstance(hint, types.UnionType):
        ok = True
    if not ok:
        raise UserError(f"recipe key '{key}' must be {_type_name(hint)}, got {value!r}")
    return value


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise UserError(f"recipe section '{prefix.rstrip('.') or 'top level'}' must be a mapping")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if not isinstance(key, str) or key not in hints or key in NOT_KEYS:
            raise UserError(f"unknown recipe key '{dotted}'{_closest(dotted)}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if hint is TaskConfig and isinstance(value, str):
                value = {"kind": value}  # `task: lm` is short for `task: {kind: lm}`
            kwargs[key] = _build(hint, value if value is not None else {}, f"{dotted}.")
        else:
            kwargs[key] = _coerce(dotted, value, hint)
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if isinstance(child, str) and part == "task":
            child = {"kind": child}
        if not isinstance(child, dict):
            child = {}
        node[part] = child
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'train.lr=3e-4' -> ('train.lr', 0.0003): the value is parsed as a YAML scalar, except
    for a key that holds a string, which takes the text as written (so '-' stays stdin, and
    a sha256 of digits stays a string)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set expects KEY=VALUE (e.g. train.lr=3e-4), got {text!r}")
    key = key.strip()
    if _takes_text(_hint_of(key), raw):
        return key, raw
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _looks_numeric(value):
        value = float(value)  # YAML 1.1 reads "3e-4" as a string; users mean a number
    return key, value


def _hint_of(dotted: str) -> Any:
    """The type hint of a dotted recipe key, or None for an unknown key or a section."""
    cls: Any = Recipe
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(cls):
            return None
        hints = typing.get_type_hints(cls)
        if part not in hints or part in NOT_KEYS:
            return None
        cls = hints[part]
    return None if dataclasses.is_dataclass(cls) else cls


def _takes_text(hint: Any, raw: str) -> bool:
    """Whether a --set value for a key of this type is the text itself rather than YAML: a
    string, one of a few names, or a string-or-list written as anything but a [list]."""
    if hint is str:
        return True
    if typing.get_origin(hint) is Literal:
        return all(isinstance(a, str) for a in typing.get_args(hint))
    if isinstance(hint, types.UnionType) and str in typing.get_args(hint):
        return not raw.lstrip().startswith(("[", "{"))
    return False


def _looks_numeric(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return any(c.isdigit() for c in s)


def from_dict(data: dict, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    tree = copy.deepcopy(data)
    for text in overrides:
        key, value = parse_override(text)
        if key not in all_keys() and not key.startswith("task"):
            raise UserError(f"unknown recipe key '{key}' in --set{_closest(key)}")
        _set_dotted(tree, key, value)
    model = tree.get("model")
    if isinstance(model, dict) and model.get("preset") in PRESETS:
        tree["model"] = {**PRESETS[model["preset"]], **model}
    recipe = _build(Recipe, tree, "")
    validate(recipe)
    recipe.given = frozenset(_flatten(tree))
    return recipe


def load(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a YAML recipe (data only: yaml.safe_load, nothing is evaluated) and validate it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe not found: {path} (pass the path of a .yaml recipe)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe must be a YAML mapping of sections")
    try:
        return from_dict(data, overrides)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None


def _check(key: str, value: float, ok: bool, expected: str) -> None:
    if not ok:
        raise UserError(f"recipe key '{key}' must be {expected}, got {value!r}")


def validate(r: Recipe) -> None:
    """Reject values no run could use, before any work starts."""
    check = _check
    m, t, tok = r.model, r.train, r.tokenizer
    check(
        "name",
        r.name,
        is_plain_name(r.name),
        "one plain folder name (not empty, '.' or '..'; no '/', '\\' or control characters; "
        "set run_dir for a path)",
    )
    for key in ("n_layer", "n_head", "n_embd", "block_size"):
        check(f"model.{key}", getattr(m, key), getattr(m, key) > 0, "a positive integer")
    check("model.n_embd", m.n_embd, m.n_embd % m.n_head == 0, f"divisible by n_head={m.n_head}")
    if m.positions == "rope":
        head_dim = m.n_embd // m.n_head
        check("model.n_embd", m.n_embd, head_dim % 2 == 0, "such that n_embd/n_head is even")
    check("model.vocab_size", m.vocab_size, m.vocab_size >= 0, "0 (from tokenizer) or positive")
    check("model.mlp_hidden", m.mlp_hidden, m.mlp_hidden >= 0, "0 (default) or positive")
    check("model.dropout", m.dropout, 0.0 <= m.dropout < 1.0, "in [0, 1)")
    check("model.norm_eps", m.norm_eps, m.norm_eps > 0, "> 0")
    check("model.n_classes", m.n_classes, m.n_classes >= 0, ">= 0 (0 = no classifier head)")
    task, lora = r.task, r.finetune.lora
    check("task.lm_weight", task.lm_weight, task.lm_weight >= 0, ">= 0 (0 = no auxiliary LM loss)")
    check("task.fields", task.fields, all(task.fields), "a list of non-empty field names")
    check("finetune.lora.rank", lora.rank, lora.rank >= 0, ">= 0 (0 = full finetuning)")
    check("finetune.lora.alpha", lora.alpha, lora.alpha > 0, "> 0")
    check("finetune.lora.dropout", lora.dropout, 0.0 <= lora.dropout < 1.0, "in [0, 1)")
    known = {"qkv", "proj", "up", "gate", "down"}
    bad = [x for x in lora.targets if x not in known]
    check(
        "finetune.lora.targets",
        lora.targets,
        lora.targets and not bad,
        f"names from {sorted(known)}",
    )
    check("model.rope_theta", m.rope_theta, m.rope_theta > 0, "> 0")
    minimum = 256 + len(tok.special_tokens)
    check(
        "tokenizer.vocab_size",
        tok.vocab_size,
        tok.vocab_size >= minimum,
        f">= {minimum} (256 bytes + {len(tok.special_tokens)} special tokens)",
    )
    check("tokenizer.vocab_size", tok.vocab_size, tok.vocab_size <= 2**31 - 1, "< 2**31")
    check(
        "tokenizer.special_tokens",
        tok.special_tokens,
        EOT in tok.special_tokens,
        f"a list that contains '{EOT}'",
    )
    check("tokenizer.min_frequency", tok.min_frequency, tok.min_frequency >= 1, ">= 1")
    _check_sources(r.data.source)
    _check_dev(r.data.dev)
    check("data.sha256", r.data.sha256, _is_sha256(r.data.sha256), "64 hex digits or empty")
    check("tokenizer.train_bytes", tok.train_bytes, tok.train_bytes > 0, "a positive integer")
    check("data.val_fraction", r.data.val_fraction, 0.0 < r.data.val_fraction < 1.0, "in (0, 1)")
    check("data.builtin_mb", r.data.builtin_mb, r.data.builtin_mb > 0, "> 0")
    check("data.max_download_mb", r.data.max_download_mb, r.data.max_download_mb > 0, "> 0")
    check("data.max_tokens", r.data.max_tokens, r.data.max_tokens >= 0, ">= 0 (0 = all)")
    for key in ("batch_size", "grad_accum", "max_steps", "eval_batches", "log_every"):
        check(f"train.{key}", getattr(t, key), getattr(t, key) > 0, "a positive integer")
    check("train.decay_fraction", t.decay_fraction, 0 < t.decay_fraction <= 1, "in (0, 1]")
    check("train.muon_lr", t.muon_lr, t.muon_lr > 0, "> 0")
    for key in ("eval_every", "save_every", "warmup_steps", "keep_last"):
        check(f"train.{key}", getattr(t, key), getattr(t, key) >= 0, ">= 0 (0 = off)")
    check("train.lr", t.lr, t.lr > 0, "> 0")
    check("train.min_lr_ratio", t.min_lr_ratio, 0.0 <= t.min_lr_ratio <= 1.0, "in [0, 1]")
    check("train.weight_decay", t.weight_decay, t.weight_decay >= 0, ">= 0")
    check("train.beta1", t.beta1, 0.0 <= t.beta1 < 1.0, "in [0, 1)")
    check("train.beta2", t.beta2, 0.0 <= t.beta2 < 1.0, "in [0, 1)")
    check("train.grad_clip", t.grad_clip, t.grad_clip >= 0, ">= 0 (0 = off)")
    check(
        "train.loggers",
        t.loggers,
        "jsonl" in t.loggers and set(t.loggers) <= set(LOGGERS),
        f"a list that contains 'jsonl' (metrics.jsonl), with any of {', '.join(LOGGERS[1:])}",
    )
    check_sample(r.sample, lambda key: f"recipe key 'sample.{key}'")


def check_sample(s: SampleConfig, name: Callable[[str], str]) -> None:
    """The sampling settings' one validator, for the recipe's sample: section and for flags
    (name says how the message calls a key: a recipe key or a --flag)."""

    def need(key: str, ok: bool, expected: str) -> None:
        value = getattr(s, key)
        if not ok:
            raise UserError(f"{name(key)} must be {expected}, got {value!r}")

    for key in ("temperature", "top_p", "min_p", "repetition_penalty"):  # nan passes any <
        need(key, math.isfinite(getattr(s, key)), "a finite number")
    need("max_new_tokens", s.max_new_tokens > 0, "a positive integer")
    need("temperature", s.temperature >= 0, ">= 0 (0 = greedy)")
    need("top_k", s.top_k >= 0, ">= 0 (0 = off)")
    need("top_p", 0.0 < s.top_p <= 1.0, "in (0, 1] (1 = off)")
    need("min_p", 0.0 <= s.min_p <= 1.0, "in [0, 1] (0 = off)")
    need("repetition_penalty", s.repetition_penalty > 0, "> 0 (1 = off)")
    need("stop", all(s.stop), "a list of non-empty strings (the text to stop before)")


def is_plain_name(name: str) -> bool:
    """One path component that stays inside its parent folder and prints as itself."""
    return (
        bool(name.strip())
        and name not in (".", "..")
        and not any(c in name for c in "/\\")
        and all(c.isprintable() for c in name)
    )


def _is_sha256(value: str) -> bool:
    return value == "" or (len(value) == 64 and all(c in "0123456789abcdef" for c in value.lower()))


SOURCE_KEYS = ("path", "weight", "sha256", "text_field")
HUB_KEYS = ("config", "split", "revision")  # an hf: source's mapping may also name these


def _check_sources(source: str | list | dict) -> None:
    """data.source: a non-empty string or mapping, or a list of them."""
    items = source if isinstance(source, list) else [source]
    keys = "{path, weight, sha256, text_field}"
    expected = f"a source string or a list of them (each a string or {keys})"
    _check("data.source", source, bool(items), expected)
    for i, item in enumerate(items):
        _check_source(f"data.source[{i}]" if isinstance(source, list) else "data.source", item)


def _check_dev(dev: str | dict) -> None:
    """data.dev: empty (unset), or one source as a string or mapping."""
    if dev != "":
        _check_source("data.dev", dev)


def _check_source(key: str, item: object) -> None:
    """One source: a non-empty string, or {path, weight, sha256, text_field} (and config,
    split, revision for an hf: path)."""
    if not isinstance(item, dict):
        _check(key, item, isinstance(item, str) and bool(item.strip()), "a non-empty string")
        return
    path, weight = item.get("path"), item.get("weight", 1.0)
    _check(f"{key}.path", path, isinstance(path, str) and bool(path.strip()), "a string")
    hub = path.startswith("hf:")
    allowed = SOURCE_KEYS + HUB_KEYS if hub else SOURCE_KEYS
    unknown = sorted(set(item) - set(allowed))
    _check(key, item, not unknown, f"a mapping with keys {', '.join(allowed)}")
    ok = isinstance(weight, (int, float)) and not isinstance(weight, bool) and weight > 0
    _check(f"{key}.weight", weight, ok, "a number > 0")
    sha = item.get("sha256", "")
    _check(f"{key}.sha256", sha, isinstance(sha, str) and _is_sha256(sha), "64 hex digits")
    for name, default in (("text_field", "text"), ("split", "train")):
        value = item.get(name, default)
        _check(f"{key}.{name}", value, isinstance(value, str) and bool(value), "a name")
    for name in ("config", "revision"):
        value = item.get(name, "")
        _check(f"{key}.{name}", value, isinstance(value, str), "a string")


def to_dict(recipe: Recipe) -> dict:
    tree = dataclasses.asdict(recipe)
    for name in NOT_KEYS:
        tree.pop(name)
    return tree


def flat(recipe: Recipe) -> dict[str, Any]:
    """Every dotted key with its value (a tracker's flat parameters)."""
    return _flatten(to_dict(recipe))


def non_defaults(recipe: Recipe) -> dict[str, Any]:
    """Dotted keys whose value differs from the default, for `inspect`."""
    flat, default = _flatten(to_dict(recipe)), _flatten(to_dict(Recipe()))
    return {k: v for k, v in flat.items() if default.get(k) != v}


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def dump(recipe: Recipe) -> str:
    return yaml.safe_dump(to_dict(recipe), sort_keys=False)
