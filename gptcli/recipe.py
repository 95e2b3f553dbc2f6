"""Recipes: one typed object that flows from YAML to the data pipeline, the model and the trainer.

Every key has a default and a one-line help (the README's key table is checked against them), so
a recipe states only what differs. Each section checks its own values next to its fields;
loading names the closest valid key on a typo; `--set a.b=v` overrides use the same path.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
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


def doc(default: Any, help: str) -> Any:
    """A recipe key's default and its one-line help (a list default is copied for each recipe)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


class BadValue(UserError):
    """A value no run could use: its dotted key, what it must be and what it got. A reader of
    a checkpoint's JSON catches it to name its own file and key instead of a recipe key."""

    def __init__(self, key: str, value: Any, expected: str) -> None:
        self.key, self.value, self.expected = key, value, expected
        super().__init__(f"recipe key '{key}' must be {expected}, got {value!r}")


def need(key: str, value: Any, ok: bool, expected: str) -> None:
    """Exit 2 naming the key, what it must be and what it got, unless ok."""
    if not ok:
        raise BadValue(key, value, expected)


def is_sha256(value: str) -> bool:
    return value == "" or (len(value) == 64 and all(c in "0123456789abcdef" for c in value.lower()))


# --------------------------------------------------------------------------- the sections


@dataclass(frozen=True)
class SourceConfig:
    """One entry of data.source (or data.dev), in its mapping form: a source string alone is
    {path: STRING} with the section's text_field (and, for a single source, its sha256)."""

    path: str = doc("", "builtin:NAME, hf:OWNER/NAME, a file, directory or glob, a URL or -")
    weight: float = doc(1.0, "how often to repeat it: 2 = twice, 0.5 = a seeded half")
    sha256: str = doc("", "expected sha256 of a URL source's download ('' = not checked)")
    text_field: str = doc("text", "the field (column) that holds a document")
    config: str = doc("", "hf: the dataset's configuration ('' = its default)")
    split: str = doc("train", "hf: the split to read")
    revision: str = doc("", "hf: a branch, tag or commit ('' = the newest)")


SOURCE_KEYS = ("path", "weight", "sha256", "text_field")
HUB_KEYS = ("config", "split", "revision")  # an hf: source's mapping may also name these


def source_config(key: str, item: object, text_field: str, sha256: str = "") -> SourceConfig:
    """One source checked and parsed: a non-empty string, or {path, weight, sha256, text_field}
    (and config, split, revision for an hf: path); text_field and sha256 are the defaults a
    string or a mapping without them takes."""
    if not isinstance(item, dict):
        need(key, item, isinstance(item, str) and bool(item.strip()), "a non-empty string")
        return SourceConfig(typing.cast(str, item), sha256=sha256, text_field=text_field)
    path, weight = item.get("path"), item.get("weight", 1.0)
    need(f"{key}.path", path, isinstance(path, str) and bool(path.strip()), "a string")
    allowed = SOURCE_KEYS + HUB_KEYS if typing.cast(str, path).startswith("hf:") else SOURCE_KEYS
    unknown = sorted(set(item) - set(allowed))
    need(key, item, not unknown, f"a mapping with keys {', '.join(allowed)}")
    ok = isinstance(weight, (int, float)) and not isinstance(weight, bool) and weight > 0
    need(f"{key}.weight", weight, ok, "a number > 0")
    sha = item.get("sha256", "")
    need(f"{key}.sha256", sha, isinstance(sha, str) and is_sha256(sha), "64 hex digits")
    for name in [n for n in ("text_field", "split") if n in item]:  # else their defaults
        value = item[name]
        need(f"{key}.{name}", value, isinstance(value, str) and bool(value), "a name")
    for name in [n for n in ("config", "revision") if n in item]:
        value = item[name]
        need(f"{key}.{name}", value, isinstance(value, str), "a string")
    given = {**item, "weight": float(weight)}
    return SourceConfig(**{"sha256": sha256, "text_field": text_field, **given})


# What a filter switched on with `true` takes: the Gopher rules' thresholds (Rae et al. 2021),
# but min_alpha_fraction, which counts characters (Gopher counts words holding a letter).
FILTER_DEFAULTS: dict[str, Any] = {
    "min_words": 50,
    "max_words": 100_000,
    "mean_word_length": [3.0, 10.0],
    "min_alpha_fraction": 0.7,
    "max_repeated_lines": 0.3,
    "repeated_ngrams": True,
}


@dataclass
class FiltersConfig:
    """Quality rules that drop whole documents, each off unless named: `true` takes the
    threshold in FILTER_DEFAULTS, a number (or [min, max]) sets it."""

    min_words: bool | int = doc(False, "drop documents of fewer words (true = 50)")
    max_words: bool | int = doc(
        False, "drop documents of more words (true = 100000; a one-document corpus loses it all)"
    )
    mean_word_length: bool | list = doc(
        False, "drop documents whose mean word length is outside [min, max] (true = [3, 10])"
    )
    min_alpha_fraction: bool | float = doc(
        False,
        "drop documents whose letters are under this share of non-space characters (true = 0.7)",
    )
    max_repeated_lines: bool | float = doc(
        False, "drop documents whose repeated lines pass this share of their lines (true = 0.3)"
    )
    repeated_ngrams: bool = doc(
        False, "drop documents whose repeated word n-grams (2 to 10) pass the Gopher thresholds"
    )
    drop_regex: str = doc("", "drop documents in which this Python regular expression matches")

    def on(self) -> dict[str, Any]:
        """The rules switched on, with their thresholds (`true` resolved)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is True:
                out[f.name] = FILTER_DEFAULTS[f.name]
            elif value is not False and value != "":
                out[f.name] = value
        return out

    def check(self) -> None:
        def number(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        for key in ("min_words", "max_words"):
            v = getattr(self, key)
            ok = isinstance(v, bool) or (type(v) is int and v >= 1)
            need(f"data.filters.{key}", v, ok, "true, false or a number of words >= 1")
        span = self.mean_word_length
        ok = isinstance(span, bool) or (
            isinstance(span, list)
            and len(span) == 2
            and all(number(x) for x in span)
            and 0 <= span[0] < span[1]
        )
        need("data.filters.mean_word_length", span, ok, "true, false or [min, max], min < max")
        for key in ("min_alpha_fraction", "max_repeated_lines"):
            v = getattr(self, key)
            ok = isinstance(v, bool) or (number(v) and 0 <= v <= 1)
            need(f"data.filters.{key}", v, ok, "true, false or a share in [0, 1]")
        try:
            re.compile(self.drop_regex)
        except re.error as e:
            need("data.filters.drop_regex", self.drop_regex, False, f"a valid regex ({e})")


@dataclass
class DataConfig:
    # each source a string or a mapping of SourceConfig's keys (path, weight, sha256,
    # text_field; an hf: source also config, split, revision)
    source: str | list | dict = doc(
        "builtin:stories",
        "builtin:NAME, hf:OWNER/NAME, a file, directory or glob, an http(s) URL, - (stdin), "
        "or a list of these",
    )
    text_field: str = doc(
        "text", "the field (column) that holds a document in .jsonl/.csv/.parquet"
    )
    sha256: str = doc("", "expected sha256 of a URL source's download ('' = not checked)")
    errors: Literal["strict", "replace"] = doc("strict", "bytes that are not UTF-8")
    val_fraction: float = doc(0.05, "share of the text held out for validation")
    builtin_mb: float = doc(8.0, "how much text a builtin: corpus generates")
    dev: str | dict = doc(
        "", "a separate evaluation set, one source (else val_fraction of the source is held out)"
    )
    max_download_mb: float = doc(10240.0, "a URL source larger than this is refused")
    allow_html: bool = doc(False, "a URL that serves an HTML page is refused unless this is true")
    max_tokens: int = doc(0, "stop after this many tokens, train + val, whole documents (0 = all)")
    dedup: Literal["none", "exact", "near"] = doc(
        "none", "drop later copies: exact (same normalised text) or near (MinHash on word 5-grams)"
    )
    dedup_threshold: float = doc(0.8, "near: the word-5-gram Jaccard similarity that makes a copy")
    filters: FiltersConfig = field(default_factory=FiltersConfig)
    decontaminate: list[str] = doc(
        [], "files or lm-eval task names: training documents sharing an n-gram with them go"
    )
    decontaminate_ngram: int = doc(13, "decontaminate: the words in each n-gram compared")

    def sources(self) -> list[SourceConfig]:
        """data.source, each entry checked and parsed: a non-empty string or mapping, or a list
        of them."""
        items = self.source if isinstance(self.source, list) else [self.source]
        keys = "{path, weight, sha256, text_field}"
        expected = f"a source string or a list of them (each a string or {keys})"
        need("data.source", self.source, bool(items), expected)
        if not isinstance(self.source, list):
            return [source_config("data.source", self.source, self.text_field, self.sha256)]
        return [source_config(f"data.source[{i}]", s, self.text_field) for i, s in enumerate(items)]

    def dev_source(self) -> SourceConfig | None:
        """data.dev checked and parsed, or None when unset."""
        return source_config("data.dev", self.dev, self.text_field) if self.dev != "" else None

    def check(self) -> None:
        self.sources()
        self.dev_source()
        need("data.sha256", self.sha256, is_sha256(self.sha256), "64 hex digits or empty")
        need("data.val_fraction", self.val_fraction, 0.0 < self.val_fraction < 1.0, "in (0, 1)")
        need("data.builtin_mb", self.builtin_mb, self.builtin_mb > 0, "> 0")
        need("data.max_download_mb", self.max_download_mb, self.max_download_mb > 0, "> 0")
        need("data.max_tokens", self.max_tokens, self.max_tokens >= 0, ">= 0 (0 = all)")
        t = self.dedup_threshold
        need("data.dedup_threshold", t, 0.0 < t <= 1.0, "a Jaccard similarity in (0, 1]")
        n = self.decontaminate_ngram
        need("data.decontaminate_ngram", n, n >= 1, "a number of words >= 1")
        bad = [x for x in self.decontaminate if not x.strip()]
        need("data.decontaminate", self.decontaminate, not bad, "a list of files or task names")
        self.filters.check()

    def curated(self) -> bool:
        """Whether any curation rule is on (dedup, filters or decontaminate)."""
        return self.dedup != "none" or bool(self.filters.on()) or bool(self.decontaminate)


@dataclass
class TokenizerConfig:
    vocab_size: int = doc(4096, "BPE vocabulary, at least 256 + the special tokens")
    special_tokens: list[str] = doc([EOT], f"tokens never split or merged; must contain {EOT}")
    min_frequency: int = doc(2, "a BPE merge needs this many occurrences")
    train_bytes: int = doc(300_000_000, "larger corpora train the BPE on a sample of this size")

    def check(self) -> None:
        minimum = 256 + len(self.special_tokens)
        need(
            "tokenizer.vocab_size",
            self.vocab_size,
            self.vocab_size >= minimum,
            f">= {minimum} (256 bytes + {len(self.special_tokens)} special tokens)",
        )
        need("tokenizer.vocab_size", self.vocab_size, self.vocab_size <= 2**31 - 1, "< 2**31")
        need(
            "tokenizer.special_tokens",
            self.special_tokens,
            EOT in self.special_tokens,
            f"a list that contains '{EOT}'",
        )
        need("tokenizer.min_frequency", self.min_frequency, self.min_frequency >= 1, ">= 1")
        need("tokenizer.train_bytes", self.train_bytes, self.train_bytes > 0, "a positive integer")


@dataclass
class ModelConfig:
    n_layer: int = doc(4, "transformer blocks")
    n_head: int = doc(4, "attention heads per block")
    n_embd: int = doc(256, "width of the residual stream")
    block_size: int = doc(256, "context length in tokens")
    vocab_size: int = doc(0, "0 = the tokenizer's vocabulary size")
    preset: Literal["", "gpt2", "llama"] = doc(
        "", "gpt2 or llama: fills positions, norm, mlp and bias unless set explicitly"
    )
    positions: Literal["learned", "rope"] = doc("learned", "learned or rotary (rope) positions")
    norm: Literal["layernorm", "rmsnorm"] = doc("layernorm", "the normalisation layers")
    mlp: Literal["gelu", "gelu_erf", "swiglu", "relu2"] = doc(
        "gelu", "the MLP's activation: gelu (GPT-2's tanh form), gelu_erf (exact), swiglu, relu2"
    )
    mlp_hidden: int = doc(
        0, "0 = 4 * n_embd (gelu, gelu_erf, relu2) or 8/3 * n_embd rounded up to 64 (swiglu)"
    )
    bias: bool = doc(True, "biases in the linear layers and norms")
    tie_embeddings: bool = doc(True, "the output head shares the token embedding's weights")
    qk_norm: bool = doc(False, "RMSNorm on queries and keys of each head")
    zero_init_proj: bool = doc(False, "residual output projections start at zero")
    dropout: float = doc(0.0, "dropout on attention and residual outputs while training")
    rope_theta: float = doc(10000.0, "rope: the base of the rotation frequencies")
    norm_eps: float = doc(1e-5, "the epsilon of the norms")
    n_classes: int = doc(0, "> 0: a linear head on the final hidden state (set by task: classify)")

    def check(self) -> None:
        for key in ("n_layer", "n_head", "n_embd", "block_size"):
            value = getattr(self, key)
            need(f"model.{key}", value, value > 0, "a positive integer")
        n_embd, n_head = self.n_embd, self.n_head
        need("model.n_embd", n_embd, n_embd % n_head == 0, f"divisible by n_head={n_head}")
        if self.positions == "rope":
            even = (n_embd // n_head) % 2 == 0
            need("model.n_embd", n_embd, even, "such that n_embd/n_head is even")
        need(
            "model.vocab_size",
            self.vocab_size,
            self.vocab_size >= 0,
            "0 (from tokenizer) or positive",
        )
        need("model.mlp_hidden", self.mlp_hidden, self.mlp_hidden >= 0, "0 (default) or positive")
        for key in ("dropout", "rope_theta", "norm_eps"):  # inf passes any >
            value = getattr(self, key)
            need(f"model.{key}", value, math.isfinite(value), "a finite number")
        need("model.dropout", self.dropout, 0.0 <= self.dropout < 1.0, "in [0, 1)")
        need("model.norm_eps", self.norm_eps, self.norm_eps > 0, "> 0")
        ok = self.n_classes >= 0
        need("model.n_classes", self.n_classes, ok, ">= 0 (0 = no classifier head)")
        need("model.rope_theta", self.rope_theta, self.rope_theta > 0, "> 0")


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

LOGGERS = ("jsonl", "tensorboard", "wandb", "mlflow")


@dataclass
class TrainConfig:
    batch_size: int = doc(32, "sequences per micro-batch")
    grad_accum: int = doc(1, "micro-batches per optimizer step")
    max_steps: int = doc(2000, "optimizer steps")
    lr: float = doc(1.0e-3, "peak learning rate")
    min_lr_ratio: float = doc(0.1, "the schedule ends at lr * min_lr_ratio")
    warmup_steps: int = doc(100, "linear warmup steps")
    lr_schedule: Literal["cosine", "wsd", "constant"] = doc(
        "cosine", "after warmup: cosine, wsd (warmup-stable-decay) or constant"
    )
    decay_fraction: float = doc(0.2, "wsd: the final share of steps that decays to min_lr")
    optimizer: Literal["adamw", "muon"] = doc(
        "adamw", "muon: Muon for the blocks' matrices, AdamW for the rest"
    )
    muon_lr: float = doc(0.02, "muon: learning rate of the hidden matrices")
    weight_decay: float = doc(0.1, "AdamW weight decay, on matrices only")
    beta1: float = doc(0.9, "AdamW beta1")
    beta2: float = doc(0.95, "AdamW beta2")
    grad_clip: float = doc(1.0, "clip the gradient norm to this (0 = no clipping)")
    eval_every: int = doc(200, "steps between validation losses (0 = off)")
    eval_batches: int = doc(20, "batches per validation loss")
    save_every: int = doc(500, "steps between checkpoints (0 = only the final one)")
    keep_last: int = doc(0, "keep only the newest N checkpoints (0 = keep all)")
    log_every: int = doc(10, "steps between metrics lines")
    device: Literal["auto", "cpu", "cuda", "mps"] = doc("auto", "auto = cuda, then mps, then cpu")
    dtype: Literal["auto", "fp32", "bf16"] = doc("auto", "auto = bf16 where native and faster")
    compile: Literal["auto", "on", "off"] = doc(
        "auto", "torch.compile: auto = on CUDA, on CPU when it repays its compile time"
    )
    # recompute blocks in backward instead of keeping their activations
    activation_checkpointing: Literal[False, True, "selective"] = doc(
        False, "recompute every block (true), every other block (selective) or none (false)"
    )
    loggers: list[str] = doc(
        ["jsonl"],
        "where metrics go: jsonl (metrics.jsonl, always) plus any of tensorboard, wandb, mlflow",
    )
    # auto picks fsdp when the training state (16 bytes a parameter) passes 60% of one
    # device's free memory
    parallel: Literal["auto", "ddp", "fsdp"] = doc(
        "auto", "under torchrun: ddp copies the model to every rank, fsdp shards it"
    )
    # compared with free RAM, a cgroup's limit and ulimit -v on a CPU, a GPU's free memory
    memory_check: bool = doc(
        True, "refuse a run whose memory estimate exceeds what it may allocate (false: try anyway)"
    )

    def check(self) -> None:
        for key in ("batch_size", "grad_accum", "max_steps", "eval_batches", "log_every"):
            need(f"train.{key}", getattr(self, key), getattr(self, key) > 0, "a positive integer")
        decay = self.decay_fraction
        need("train.decay_fraction", decay, 0 < decay <= 1, "in (0, 1]")
        need("train.muon_lr", self.muon_lr, self.muon_lr > 0, "> 0")
        for key in ("eval_every", "save_every", "warmup_steps", "keep_last"):
            need(f"train.{key}", getattr(self, key), getattr(self, key) >= 0, ">= 0 (0 = off)")
        need("train.lr", self.lr, self.lr > 0, "> 0")
        need("train.min_lr_ratio", self.min_lr_ratio, 0.0 <= self.min_lr_ratio <= 1.0, "in [0, 1]")
        need("train.weight_decay", self.weight_decay, self.weight_decay >= 0, ">= 0")
        need("train.beta1", self.beta1, 0.0 <= self.beta1 < 1.0, "in [0, 1)")
        need("train.beta2", self.beta2, 0.0 <= self.beta2 < 1.0, "in [0, 1)")
        need("train.grad_clip", self.grad_clip, self.grad_clip >= 0, ">= 0 (0 = off)")
        need(
            "train.loggers",
            self.loggers,
            "jsonl" in self.loggers and set(self.loggers) <= set(LOGGERS),
            f"a list that contains 'jsonl' (metrics.jsonl), with any of {', '.join(LOGGERS[1:])}",
        )


@dataclass
class TensorBoardConfig:
    log_dir: str = doc("", "TensorBoard event files ('' = <run folder>/tensorboard)")


@dataclass
class WandbConfig:
    project: str = doc("", "'' = $WANDB_PROJECT, else gptcli")
    entity: str = doc("", "'' = $WANDB_ENTITY, else the account's default")
    mode: Literal["", "online", "offline", "disabled"] = doc("", "'' = $WANDB_MODE, else online")


@dataclass
class MlflowConfig:
    tracking_uri: str = doc("", "'' = $MLFLOW_TRACKING_URI, else sqlite:///<run folder>/mlflow.db")
    experiment: str = doc("", "'' = $MLFLOW_EXPERIMENT_NAME, else gptcli")


@dataclass
class TrackersConfig:
    """Settings of the trackers train.loggers names; each honours its own environment."""

    tensorboard: TensorBoardConfig = field(default_factory=TensorBoardConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)


def recipe_key(section: str) -> Callable[[str], str]:
    """How a message names a key of SECTION: recipe key 'section.key'."""
    return lambda key: f"recipe key '{section}.{key}'"


@dataclass
class SampleConfig:
    max_new_tokens: int = doc(200, "tokens to generate")
    temperature: float = doc(0.8, "0 = greedy; higher = more varied")
    top_k: int = doc(50, "keep only the k likeliest tokens (0 = off)")
    top_p: float = doc(1.0, "keep the smallest set of tokens with this much probability (1 = off)")
    min_p: float = doc(
        0.0, "0 = off; else drop tokens below min_p * the likeliest token's probability"
    )
    repetition_penalty: float = doc(1.0, "1 = off; > 1 discourages tokens already in the text")
    stop: list[str] = doc([], "stop before any of these strings")

    def check(self, name: Callable[[str], str] = recipe_key("sample")) -> None:
        """The sampling settings' one validator, for the recipe's sample: section and for flags
        (name says how the message calls a key: a recipe key or a --flag)."""

        def want(key: str, ok: bool, expected: str) -> None:
            value = getattr(self, key)
            if not ok:
                raise UserError(f"{name(key)} must be {expected}, got {value!r}")

        for key in ("temperature", "top_p", "min_p", "repetition_penalty"):  # nan passes any <
            want(key, math.isfinite(getattr(self, key)), "a finite number")
        want("max_new_tokens", self.max_new_tokens > 0, "a positive integer")
        want("temperature", self.temperature >= 0, ">= 0 (0 = greedy)")
        want("top_k", self.top_k >= 0, ">= 0 (0 = off)")
        want("top_p", 0.0 < self.top_p <= 1.0, "in (0, 1] (1 = off)")
        want("min_p", 0.0 <= self.min_p <= 1.0, "in [0, 1] (0 = off)")
        want("repetition_penalty", self.repetition_penalty > 0, "> 0 (1 = off)")
        want("stop", all(self.stop), "a list of non-empty strings (the text to stop before)")


@dataclass
class TaskConfig:
    """What finetune trains for. classify follows GPT-1: each example becomes one token sequence
    (start, delimiter, extract tokens), a linear head reads the extract token's final state."""

    kind: Literal["lm", "sft", "classify"] = doc("lm", "what finetune trains for")
    format: Literal["single", "pair", "similarity", "choice"] = doc(
        "single", "classify: how the inputs are laid out"
    )
    # [] = the format's defaults (DEFAULT_FIELDS): single [text], pair [premise, hypothesis],
    # similarity [sentence1, sentence2], choice [context, choices]; sft [prompt, response], or
    # a `messages` list of {role, content}
    fields: list[str] = doc([], "the fields that hold the texts, in order ([] = the defaults)")
    label_field: str = doc("label", "classify: the field that holds the label")
    label_names: list[str] = doc([], "names of labels 0..n-1 ([] = learned)")
    lm_weight: float = doc(0.5, "classify: weight of the auxiliary language-model loss (λ)")

    def check(self) -> None:
        ok = self.lm_weight >= 0
        need("task.lm_weight", self.lm_weight, ok, ">= 0 (0 = no auxiliary LM loss)")
        need("task.fields", self.fields, all(self.fields), "a list of non-empty field names")


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
    count = 2 if key in ("pair", "similarity", "choice", "sft") else 1
    if len(fields) != count:
        what = "field" if count == 1 else "fields"
        raise UserError(f"task.fields for {key} needs {count} {what}, got {fields}")
    return fields


LORA_TARGETS = ("qkv", "proj", "up", "gate", "down")


@dataclass
class LoraConfig:
    rank: int = doc(0, "0 = no LoRA: every weight trains")
    alpha: float = doc(16.0, "the update is scaled by alpha / rank")
    dropout: float = doc(0.0, "dropout on the adapters' input")
    targets: list[str] = doc(
        list(LORA_TARGETS),
        "linear layers that get adapters, by name (attention: qkv, proj; MLP: up, gate, down)",
    )

    def check(self) -> None:
        need("finetune.lora.rank", self.rank, self.rank >= 0, ">= 0 (0 = full finetuning)")
        need("finetune.lora.alpha", self.alpha, self.alpha > 0, "> 0")
        need("finetune.lora.dropout", self.dropout, 0.0 <= self.dropout < 1.0, "in [0, 1)")
        bad = [x for x in self.targets if x not in LORA_TARGETS]
        ok = bool(self.targets) and not bad
        need("finetune.lora.targets", self.targets, ok, f"names from {sorted(LORA_TARGETS)}")


@dataclass
class FinetuneConfig:
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class Recipe:
    name: str = doc("run", "the run folder is runs/<name>: one plain folder name")
    seed: int = doc(1337, "corpus generation, split, init, batch order")
    run_dir: str = doc(
        "", "'' = runs/<name>; a path on purpose, used as given (name is a plain name)"
    )
    init: str = doc("", "finetune: the checkpoint or run folder to start from")
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

    def check(self) -> None:
        need(
            "name",
            self.name,
            is_plain_name(self.name),
            "one plain folder name (not empty, '.' or '..'; no '/', '\\' or control "
            "characters; set run_dir for a path)",
        )


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
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    return {**names, dict: "a mapping (JSON object)", list: "a list"}.get(hint, str(hint))


def typed_value(key: str, value: Any, hint: Any) -> Any:
    """Check one leaf value against its type hint (recipe keys and the JSON files gptcli
    writes alike); ints are accepted where floats are, and come back as floats."""
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
    elif hint in (str, dict, list):
        ok = isinstance(value, hint)
    elif isinstance(hint, types.UnionType):
        ok = True
    if not ok:
        raise BadValue(key, value, _type_name(hint))
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
            kwargs[key] = typed_value(dotted, value, hint)
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


def validate(r: Recipe) -> None:
    """Reject values no run could use, before any work starts: each section checks its own
    keys (no check spans two sections yet)."""
    r.check()
    for section in (r.model, r.task, r.finetune.lora, r.tokenizer, r.data, r.train, r.sample):
        section.check()


def is_plain_name(name: str) -> bool:
    """One path component that stays inside its parent folder and prints as itself."""
    return (
        bool(name.strip())
        and name not in (".", "..")
        and not any(c in name for c in "/\\")
        and all(c.isprintable() for c in name)
    )


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


# Keys added after runs were made: recipe.yaml leaves them out while they hold their defaults,
# so the recipe.yaml of such a run stays byte for byte what it was (reading it gives them back).
OMITTED_AT_DEFAULT = (
    "data.dedup",
    "data.dedup_threshold",
    "data.filters",
    "data.decontaminate",
    "data.decontaminate_ngram",
)


def dump(recipe: Recipe) -> str:
    tree, default = to_dict(recipe), to_dict(Recipe())
    for dotted in OMITTED_AT_DEFAULT:
        section, _, key = dotted.rpartition(".")
        if tree[section][key] == default[section][key]:
            del tree[section][key]
    return yaml.safe_dump(tree, sort_keys=False)
