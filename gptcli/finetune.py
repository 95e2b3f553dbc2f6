"""Finetuning: start from a trained checkpoint and train on task data through the same trainer.

- `task: lm` continues next-token training on new text (the checkpoint's tokenizer and shape).
- `task: sft` trains on prompt/response pairs (or `messages` lists) rendered with a chat
  template whose special tokens are added to the tokenizer; the loss covers response tokens only.
- `task: classify` follows the GPT-1 paper: each example is rewritten as token sequences
  `<|start|> a <|delim|> b <|extract|>`, a linear head reads the final hidden state at the
  extract token, and the LM loss on the same sequences is kept as an auxiliary term
  (loss = task loss + lm_weight * LM loss). Formats: single text, pair (entailment), similarity
  (both orders, final states added) and multiple choice (one score per answer, softmax over them).

Every run goes into a new run folder, so the pretrained run is never modified. With
`finetune.lora.rank > 0` only LoRA adapters (and the task head) train; see lora.py.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gptcli import checkpoint, console, data, lora, tokenizer, train
from gptcli import recipe as recipe_mod
from gptcli.console import UserError
from gptcli.device import init_distributed
from gptcli.model import GPT
from gptcli.recipe import ModelConfig, Recipe, TaskConfig

START, DELIM, EXTRACT = "<|start|>", "<|delim|>", "<|extract|>"
CLASSIFY_TOKENS = [START, DELIM, EXTRACT]
ROLES = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
END = "<|end|>"
CHAT_TOKENS = [*ROLES.values(), END]
CHAT_TEMPLATE = "gptcli-chat-v1"  # <|role|>content<|end|> per turn, then <|assistant|>

DEFAULT_FIELDS = {
    "single": ["text"],
    "pair": ["premise", "hypothesis"],
    "similarity": ["sentence1", "sentence2"],
    "choice": ["context", "choices"],
    "sft": ["prompt", "response"],
}


def task_fields(task: TaskConfig) -> list[str]:
    key = "sft" if task.kind == "sft" else task.format
    fields = task.fields or DEFAULT_FIELDS[key]
    need = 2 if key in ("pair", "similarity", "choice", "sft") else 1
    if len(fields) != need:
        what = "field" if need == 1 else "fields"
        raise UserError(f"task.fields for {key} needs {need} {what}, got {fields}")
    return fields


# --------------------------------------------------------------------------- reading task data


def read_records(path: str | Path) -> Iterator[tuple[str, dict]]:
    """(where, record) for each example of a .jsonl, .tsv or .csv file (with a header row)."""
    p = Path(path)
    if not str(path):
        raise UserError("data.source is empty: name the task's training file (.jsonl/.tsv/.csv)")
    if not p.is_file():
        raise UserError(f"task data not found: {p} (a .jsonl, .tsv or .csv file)")
    suffix = p.suffix.lower()
    try:
        with open(p, encoding="utf-8", newline="") as f:
            if suffix in (".tsv", ".csv"):
                delimiter = "\t" if suffix == ".tsv" else ","
                reader = csv.DictReader(f, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL)
                for row in reader:
                    yield f"{p}:{reader.line_num}", dict(row)
                return
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{p}:{n}: not valid JSON ({e.msg})") from None
                if not isinstance(record, dict):
                    raise UserError(f"{p}:{n}: expected a JSON object per line")
                yield f"{p}:{n}", record
    except UnicodeDecodeError as e:
        raise UserError(f"{p}: not UTF-8 text (byte {e.start})") from None


def _get(record: dict, field: str, where: str) -> Any:
    value = data._field(record, field)  # dotted names reach into nested objects
    if value is None:
        found = ", ".join(sorted(record)) or "none"
        raise UserError(
            f"{where}: missing field {field!r} (fields found: {found}; set task.fields)"
        )
    return value


def _text(value: Any, field: str, where: str) -> str:
    if not isinstance(value, str):
        raise UserError(f"{where}: field {field!r} must be a string, got {type(value).__name__}")
    return tokenizer.check_text(value, where)  # a JSON \udcff escape is no character


# --------------------------------------------------------------------------- tokenizer


def add_special_tokens(tok, tokens: list[str]) -> list[int]:
    """Add the tokens the task needs (when missing); returns the ids of those added."""
    missing = [t for t in tokens if tok.token_to_id(t) is None]
    if missing:
        tok.add_special_tokens(missing)
    return [tok.token_to_id(t) for t in missing]


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


# --------------------------------------------------------------------------- shared batching


class _Order:
    """Which examples make batch i: a fresh seeded permutation each epoch, cut into chunks of
    `bucket` batches whose examples are sorted by length (so a batch pads little) and whose
    batches are then shuffled. Batch i depends only on (seed, i), so a resumed run sees exactly
    the batches the uninterrupted one would have."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, bucket: int = 32) -> None:
        self.lengths, self.batch_size, self.seed = lengths, batch_size, seed
        self.bucket = bucket
        self._chunk, self._batches = -1, []

    def _permutation(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.lengths), generator=g).tolist()

    def indices(self, index: int) -> list[int]:
        chunk, slot = divmod(index, self.bucket)
        if chunk != self._chunk:
            n, size = len(self.lengths), self.bucket * self.batch_size
            perms: dict[int, list[int]] = {}
            examples = []
            for pos in range(chunk * size, (chunk + 1) * size):
                epoch, offset = divmod(pos, n)
                if epoch not in perms:
                    perms[epoch] = self._permutation(epoch)
                examples.append(perms[epoch][offset])
            examples.sort(key=lambda i: self.lengths[i])
            b = self.batch_size
            batches = [examples[j * b : (j + 1) * b] for j in range(self.bucket)]
            random.Random(self.seed * 7919 + chunk).shuffle(batches)
            self._chunk, self._batches = chunk, batches
        return self._batches[slot]


def _pad(rows: list[list[int]], targets: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded inputs and targets (-1 = no loss). Causal attention never looks right, so
    padding needs no mask and rows never see each other."""
    width = max(len(r) for r in rows)
    x = torch.zeros(len(rows), width, dtype=torch.long)
    y = torch.full((len(rows), width), -1, dtype=torch.long)
    for i, (r, t) in enumerate(zip(rows, targets, strict=False)):
        x[i, : len(r)] = torch.tensor(r)
        y[i, : len(t)] = torch.tensor(t)
    return x, y


def _split_dev(items: list, recipe: Recipe) -> tuple[list, list]:
    """Without data.dev, a seeded val_fraction of the training examples is held out."""
    order = list(range(len(items)))
    random.Random(recipe.seed + 1).shuffle(order)
    n_dev = max(1, round(len(items) * recipe.data.val_fraction))
    if len(items) - n_dev < 1:
        raise UserError(f"{recipe.data.source}: too few examples to hold out a dev split")
    dev = set(order[:n_dev])
    return [x for i, x in enumerate(items) if i not in dev], [items[i] for i in sorted(dev)]


# --------------------------------------------------------------------------- classify


@dataclass
class Example:
    rows: list[list[int]]  # one sequence (single, pair), two (similarity) or one per choice
    label: int


class ClassifyTask:
    """GPT-1 task head: sequences in, the extract token's final state through a linear head."""

    def __init__(self, task: TaskConfig, tok, block_size: int, label_names: list[str]) -> None:
        self.task, self.tok, self.block_size = task, tok, block_size
        self.format = task.format
        self.fields = task_fields(task)
        self.label_names = [] if self.format == "choice" else label_names
        self.ids = {t: tok.token_to_id(t) for t in CLASSIFY_TOKENS}
        self.eval_batch_size = 64
        self.checkpoint_info = {
            "task": {
                "kind": "classify",
                "format": self.format,
                "fields": self.fields,
                "label_field": task.label_field,
                "label_names": self.label_names,
                "lm_weight": task.lm_weight,
            }
        }

    @classmethod
    def for_training(cls, recipe: Recipe, tok, block_size: int) -> ClassifyTask:
        """Read and encode the training and dev files; label names come from the recipe or
        are learned from the training file."""
        source = str(recipe.data.source)
        records = list(read_records(source))
        if not records:
            raise UserError(f"{source}: no examples")
        names = recipe.task.label_names
        if recipe.task.format != "choice":
            names = names or _learn_labels(records, recipe.task.label_field)
            if len(names) < 2:
                raise UserError(
                    f"{source}: one label only ({names}); a classifier needs at least two "
                    "(set task.label_names)"
                )
        self = cls(recipe.task, tok, block_size, names)
        self.batch_size = recipe.train.batch_size
        self.eval_batch_size = recipe.train.batch_size * 2
        self.train_examples = self.encode(records, source)
        if recipe.data.dev:
            self.dev_examples = self.encode(list(read_records(recipe.data.dev)), recipe.data.dev)
        else:
            self.train_examples, self.dev_examples = _split_dev(self.train_examples, recipe)
        lengths = [sum(len(r) for r in ex.rows) for ex in self.train_examples]
        self.order = _Order(lengths, self.batch_size, recipe.seed)
        counts = [0] * self.n_classes
        for ex in self.dev_examples:
            counts[ex.label if self.format != "choice" else 0] += 1
        self.majority = max(counts) / max(len(self.dev_examples), 1)
        console.info(
            f"classify ({self.format}): {len(self.train_examples):,} training and "
            f"{len(self.dev_examples):,} dev examples"
            + (f", labels {self.label_names}" if self.label_names else "")
        )
        return self

    @property
    def n_classes(self) -> int:
        return 1 if self.format == "choice" else len(self.label_names)

    # ----- examples

    def segments(self, record: dict, where: str) -> list[tuple[str, str | None]]:
        a_field, *rest = self.fields
        a = _text(_get(record, a_field, where), a_field, where)
        if self.format == "single":
            return [(a, None)]
        b_value = _get(record, rest[0], where)
        if self.format == "choice":
            if (
                not isinstance(b_value, list)
                or not b_value
                or not all(isinstance(c, str) for c in b_value)
            ):
                raise UserError(f"{where}: field {rest[0]!r} must be a non-empty list of strings")
            return [(a, c) for c in b_value]
        b = _text(b_value, rest[0], where)
        return [(a, b), (b, a)] if self.format == "similarity" else [(a, b)]

    def label_of(self, record: dict, where: str, n_choices: int) -> int:
        value = _get(record, self.task.label_field, where)
        if self.format == "choice":
            ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < n_choices
            if isinstance(value, str) and value.isdigit() and int(value) < n_choices:
                return int(value)
            if not ok:
                raise UserError(
                    f"{where}: label {value!r} is not the index of one of the {n_choices} choices"
                )
            return value
        return label_index(value, self.label_names, where)

    def token_ids(self, segments: list[list[tuple[str, str | None]]]) -> dict[str, list[int]]:
        """Every distinct text of these examples' segments, encoded once (in parallel)."""
        texts = sorted({t for segs in segments for pair in segs for t in pair if t is not None})
        return dict(zip(texts, tokenizer.encode_batch(self.tok, texts), strict=True))

    def rows(self, segs: list[tuple[str, str | None]], ids: dict) -> tuple[list[list[int]], int]:
        """One example's token sequences, and how many of them were cut to the context."""
        made = [self.sequence(ids[a], None if b is None else ids[b]) for a, b in segs]
        return [row for row, _ in made], sum(cut for _, cut in made)

    def encode(self, records: list[tuple[str, dict]], source: str) -> list[Example]:
        segments = [self.segments(r, where) for where, r in records]
        labels = [
            self.label_of(r, where, len(segs))
            for (where, r), segs in zip(records, segments, strict=True)
        ]
        ids = self.token_ids(segments)
        examples, cut = [], 0
        for segs, label in zip(segments, labels, strict=True):
            rows, n_cut = self.rows(segs, ids)
            examples.append(Example(rows, label))
            cut += n_cut
        if cut:
            console.warn(
                f"{source}: {cut:,} sequences were longer than the context ({self.block_size} "
                "tokens) and were cut from the left of their first text"
            )
        return examples

    def sequence(self, a: list[int], b: list[int] | None) -> tuple[list[int], bool]:
        """start a [delim b] extract, cut to the context: the first text loses its left part
        first (then the second its right part); the extract token is always kept."""
        budget = self.block_size - 2 - (b is not None)
        cut = len(a) + len(b or []) > budget
        if cut:
            b = None if b is None else b[:budget]
            room = budget - len(b or [])
            a = a[len(a) - room :] if room > 0 else []
        ids = self.ids
        middle = a if b is None else [*a, ids[DELIM], *b]
        return [ids[START], *middle, ids[EXTRACT]], cut

    # ----- batches and loss

    def collate(self, examples: list[Example]) -> tuple[torch.Tensor, ...]:
        rows, targets, owner, slot = [], [], [], []
        for i, ex in enumerate(examples):
            for j, row in enumerate(ex.rows):
                rows.append(row)
                targets.append(row[1:] + [-1])  # the LM's next token; nothing after extract
                owner.append(i)
                slot.append(j)
        x, y = _pad(rows, targets)
        extract = torch.tensor([len(r) - 1 for r in rows])
        labels = torch.tensor([ex.label for ex in examples])
        return x, y, extract, torch.tensor(owner), torch.tensor(slot), labels

    def batch(self, index: int) -> tuple[torch.Tensor, ...]:
        return self.collate([self.train_examples[i] for i in self.order.indices(index)])

    def scores(self, model: GPT, batch: tuple[torch.Tensor, ...]):
        x, y, extract, owner, slot, labels = batch
        h = model.hidden(x)
        final = h[torch.arange(len(x), device=x.device), extract]
        n = len(labels)
        if self.format == "choice":
            score = model.cls_head(final).squeeze(-1).float()
            logits = torch.full((n, int(slot.max()) + 1), float("-inf"), device=x.device)
            logits[owner, slot] = score
        else:  # similarity adds the final states of both orders; the others have one row each
            pooled = torch.zeros(n, final.shape[-1], device=x.device, dtype=final.dtype)
            logits = model.cls_head(pooled.index_add(0, owner, final)).float()
        return logits, h

    def loss(self, model: GPT, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        logits, h = self.scores(model, batch)
        loss = F.cross_entropy(logits, batch[-1])
        if self.task.lm_weight > 0:
            loss = loss + self.task.lm_weight * model.loss(h, batch[1])
        return loss

    @torch.no_grad()
    def predict(self, model: GPT, examples: list[Example], device, amp=None) -> torch.Tensor:
        """Class (or choice) probabilities, one row per example."""
        was_training = model.training
        model.eval()
        by_length = sorted(range(len(examples)), key=lambda i: len(examples[i].rows[0]))
        out = []
        for start in range(0, len(examples), self.eval_batch_size):
            chunk = by_length[start : start + self.eval_batch_size]
            batch = self.collate([examples[i] for i in chunk])
            batch = tuple(b.to(device) for b in batch)
            with train._autocast(device, amp):
                logits, _ = self.scores(model, batch)
            out.append(logits.float().softmax(-1).cpu())
        model.train(was_training)
        if self.format == "choice":  # pad to the widest choice list
            width = max(p.shape[1] for p in out)
            out = [F.pad(p, (0, width - p.shape[1])) for p in out]
        probs = torch.empty(len(examples), out[0].shape[1])
        probs[torch.tensor(by_length)] = torch.cat(out)
        return probs

    def evaluate(self, model: GPT, device, amp) -> dict:
        probs = self.predict(model, self.dev_examples, device, amp)
        gold = torch.tensor([ex.label for ex in self.dev_examples])
        pred = probs.argmax(-1)
        nll = -probs[torch.arange(len(gold)), gold].clamp_min(1e-12).log().mean().item()
        result = {
            "val_loss": round(nll, 5),
            "val_accuracy": round((pred == gold).float().mean().item(), 5),
        }
        if self.format != "choice":
            result["val_macro_f1"] = round(macro_f1(pred, gold, self.n_classes), 5)
        return result

    def summary(self, last: dict) -> tuple[dict, str]:
        extra = {
            "val_accuracy": last.get("val_accuracy"),
            "val_macro_f1": last.get("val_macro_f1"),
            "majority_accuracy": round(self.majority, 5) if self.format != "choice" else None,
        }
        if last.get("val_accuracy") is None:
            return extra, ""
        line = f"done: dev accuracy {last['val_accuracy']:.2%}"
        if "val_macro_f1" in last:
            line += f", macro-F1 {last['val_macro_f1']:.3f}; majority class {self.majority:.2%}"
        return extra, line


def _learn_labels(records: list[tuple[str, dict]], field: str) -> list[str]:
    """Label names from the training file: integers 0..max name themselves, strings sort."""
    values = [_get(r, field, where) for where, r in records]
    if all(_is_int_label(v) for v in values):
        return [str(i) for i in range(max(int(v) for v in values) + 1)]
    return sorted({str(v) for v in values})


def _is_int_label(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, str) and value.isdigit())


def label_index(value: Any, names: list[str], where: str) -> int:
    if _is_int_label(value) and str(value) not in names:
        i = int(value)
        if 0 <= i < len(names):
            return i
    elif str(value) in names and not isinstance(value, bool):
        return names.index(str(value))
    raise UserError(f"{where}: unknown label {value!r} (the labels are {names})")


def macro_f1(pred: torch.Tensor, gold: torch.Tensor, n_classes: int) -> float:
    scores = []
    for c in range(n_classes):
        tp = ((pred == c) & (gold == c)).sum().item()
        fp = ((pred == c) & (gold != c)).sum().item()
        fn = ((pred != c) & (gold == c)).sum().item()
        scores.append(2 * tp / max(2 * tp + fp + fn, 1))
    return sum(scores) / n_classes


# --------------------------------------------------------------------------- sft


def chat_ids(tok, messages: list[dict], add_generation_prompt: bool = False) -> tuple[list, list]:
    """The chat template: <|endoftext|> then <|role|>content<|end|> per message (and
    <|assistant|> to ask for a reply). Returns ids and, per id, whether it is a response token
    (assistant content and its <|end|>: the tokens SFT trains on)."""
    ids, is_response = [tokenizer.eot_id(tok)], [False]
    end = tok.token_to_id(END)
    contents = tokenizer.encode_batch(tok, [m["content"] for m in messages])
    for message, content in zip(messages, contents, strict=False):
        role = tok.token_to_id(ROLES[message["role"]])
        trained = message["role"] == "assistant"
        ids += [role, *content, end]
        is_response += [False] + [trained] * (len(content) + 1)
    if add_generation_prompt:
        ids.append(tok.token_to_id(ROLES["assistant"]))
        is_response.append(False)
    return ids, is_response


def messages_of(record: dict, fields: list[str], where: str) -> list[dict]:
    if "messages" in record:
        msgs = record["messages"]
        ok = (
            isinstance(msgs, list)
            and msgs
            and all(
                isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
                for m in msgs
            )
        )
        if not ok:
            raise UserError(
                f"{where}: 'messages' must be a list of {{role, content}} with roles "
                f"{sorted(ROLES)}"
            )
        for m in msgs:
            tokenizer.check_text(m["content"], where)
        return msgs
    prompt = _text(_get(record, fields[0], where), fields[0], where)
    response = _text(_get(record, fields[1], where), fields[1], where)
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


class SFTTask:
    """Supervised finetuning: chat-formatted examples, loss on the response tokens only."""

    checkpoint_info = {"task": {"kind": "sft", "template": CHAT_TEMPLATE}}

    def __init__(self, recipe: Recipe, tok, block_size: int) -> None:
        self.tok, self.block_size = tok, block_size
        fields = task_fields(recipe.task)
        train_ex = self.encode(read_records(recipe.data.source), str(recipe.data.source), fields)
        if recipe.data.dev:
            dev_ex = self.encode(read_records(recipe.data.dev), recipe.data.dev, fields)
        else:
            train_ex, dev_ex = _split_dev(train_ex, recipe)
        self.train_examples, self.dev_examples = train_ex, dev_ex
        b = self.batch_size = recipe.train.batch_size
        self.order = _Order([len(x) for x, _ in train_ex], b, recipe.seed)
        dev = dev_ex[: b * recipe.train.eval_batches]
        self.dev_batches = [_pad(*zip(*dev[i : i + b], strict=True)) for i in range(0, len(dev), b)]
        console.info(
            f"sft: {len(train_ex):,} training and {len(dev_ex):,} dev conversations "
            f"(template {CHAT_TEMPLATE})"
        )

    def encode(self, records: Iterable, source: str, fields: list[str]) -> list[tuple]:
        examples, cut, empty = [], 0, 0
        for where, record in records:
            ids, is_response = chat_ids(self.tok, messages_of(record, fields, where))
            targets = [t if r else -1 for t, r in zip(ids[1:], is_response[1:], strict=False)]
            inputs = ids[:-1]
            if len(inputs) > self.block_size:  # keep the end: the response is what trains
                cut += 1
                inputs, targets = inputs[-self.block_size :], targets[-self.block_size :]
            if all(t == -1 for t in targets):
                empty += 1
                continue
            examples.append((inputs, targets))
        if cut:
            console.warn(
                f"{source}: {cut:,} conversations were longer than the context "
                f"({self.block_size} tokens) and were cut from the left"
            )
        if empty:
            console.warn(f"{source}: {empty:,} examples have no response tokens left; skipped")
        if not examples:
            raise UserError(f"{source}: no usable examples")
        return examples

    def batch(self, index: int) -> tuple[torch.Tensor, ...]:
        return _pad(
            *zip(*(self.train_examples[i] for i in self.order.indices(index)), strict=False)
        )

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return model(*batch)[1]

    def evaluate(self, model: GPT, device, amp) -> dict:
        return {"val_loss": round(train.evaluate(model, self.dev_batches, device, amp), 5)}

    def summary(self, last: dict) -> tuple[dict, str]:
        if last.get("val_loss") is None:
            return {}, ""
        return {}, f"done: dev loss on response tokens {last['val_loss']:.4f}"


# --------------------------------------------------------------------------- the command


def finetune(recipe: Recipe, fresh: bool = False) -> dict | None:
    """`gptcli finetune`. Under torchrun (as pretrain), rank 0 prepares the run folder and
    holds its lock while the other ranks wait for it, then every rank trains its own batches;
    rank 0 alone returns the summary."""
    if not recipe.init:
        raise UserError(
            "finetune needs `init:` in the recipe: the checkpoint or run folder to start from "
            "(e.g. --set init=runs/tiny)"
        )
    dist = init_distributed(recipe.train.device)
    if not dist.main:
        console.set_quiet(True)
    loaded = checkpoint.load(recipe.init)
    if loaded.info["task"].get("kind") == "classify":
        raise UserError(
            f"{loaded.path} is a classifier; finetune from a language-model checkpoint "
            "(its pretraining run)"
        )
    cfg = model_from_init(recipe, loaded.config, loaded.path)
    console.info(f"finetune: starting from {loaded.path} (step {loaded.state.get('step', '?')})")
    # The run records the model it actually trains: the checkpoint's.
    recipe = dataclasses.replace(recipe, model=dataclasses.replace(cfg, vocab_size=0))
    run_dir = recipe_mod.run_dir(recipe)
    if run_dir.resolve() == loaded.path.parent.parent.resolve():
        raise UserError(f"the finetune run folder {run_dir} is the init run's folder; change name:")
    run_dir, lock = train.open_run(run_dir, fresh, dist)
    init_tokenizer = loaded.path / tokenizer.TOKENIZER_FILE
    new_ids: list[int] = []
    with lock:
        if recipe.task.kind == "lm":
            if dist.main:
                train.check_resumable(recipe, run_dir, cfg, init_tokenizer)
                data.prepare(recipe, run_dir, given_tokenizer=init_tokenizer)
            train.barrier(dist)
            manifest = data.read_manifest(run_dir)
            task: Any = train.LMTask(run_dir, manifest, cfg.block_size, recipe.train, recipe.seed)
            weights = loaded.weights
        else:
            tok = tokenizer.load(init_tokenizer)
            old_vocab = tok.get_vocab_size()
            added = CLASSIFY_TOKENS if recipe.task.kind == "classify" else CHAT_TOKENS
            new_ids = add_special_tokens(tok, added)
            if dist.main:
                _check_run_tokenizer(run_dir, tok)
            if recipe.task.kind == "classify":
                task = ClassifyTask.for_training(recipe, tok, cfg.block_size)
                n_classes = task.n_classes
            else:
                task = SFTTask(recipe, tok, cfg.block_size)
                n_classes = 0
            vocab = max(cfg.vocab_size, tok.get_vocab_size())
            cfg = dataclasses.replace(cfg, vocab_size=vocab, n_classes=n_classes)
            if dist.main:
                train.check_resumable(recipe, run_dir, cfg)
                run_dir.mkdir(parents=True, exist_ok=True)
                tokenizer.save(tok, run_dir / tokenizer.TOKENIZER_FILE)
            weights = grow_embeddings(loaded.weights, vocab, new_ids, old_vocab)
        if dist.main:
            data.write_atomic(run_dir / "recipe.yaml", recipe_mod.dump(recipe).encode())
        train.barrier(dist)
        torch.manual_seed(recipe.seed)
        model = GPT(cfg)
        missing, unexpected = model.load_state_dict(weights, strict=False)
        allowed = {"lm_head.weight", "cls_head.weight", "cls_head.bias"}
        if set(missing) - allowed or unexpected:
            raise UserError(f"{loaded.path}: the weights do not match its config.json")
        lora_cfg = recipe.finetune.lora
        if lora_cfg.rank:
            adapted = lora.apply(model, lora_cfg)
            if not adapted:
                raise UserError(
                    f"finetune.lora.targets {lora_cfg.targets} match no layer of this model"
                )
            base_vocab = min(
                loaded.config.vocab_size, min(new_ids, default=loaded.config.vocab_size)
            )
            task.checkpoint_info = {
                **task.checkpoint_info,
                "lora": {
                    **dataclasses.asdict(lora_cfg),
                    "base": {
                        "path": str(loaded.path.resolve()),
                        "sha256": data.file_sha256(loaded.path / "model.safetensors"),
                    },
                    "base_vocab": base_vocab,
                },
            }
        no_lm_loss = recipe.task.kind == "classify" and recipe.task.lm_weight == 0
        if no_lm_loss and model.lm_head.weight is not model.wte.weight:
            # an untied unembedding then gets no gradient; frozen, it is also no parameter
            # that DDP would wait for
            model.lm_head.weight.requires_grad_(False)
        summary = train.fit(recipe, run_dir, model, task, dist=dist)
        train.barrier(dist)
        return summary if dist.main else None


def model_from_init(recipe: Recipe, init: ModelConfig, init_path: Path) -> ModelConfig:
    """The init checkpoint's model with the recipe's training-only model keys (dropout)
    applied; a shape key the recipe gives must agree with the checkpoint, which it cannot change.
    """
    cfg = init
    for key in sorted(k.removeprefix("model.") for k in recipe.given if k.startswith("model.")):
        wanted, have = getattr(recipe.model, key), getattr(init, key)
        if key == "preset" or (key == "vocab_size" and wanted == 0) or wanted == have:
            continue  # a preset is the switches it fills; vocab_size 0 means "the tokenizer's"
        if key in train.NON_SHAPE_KEYS:
            console.info(f"finetune: model.{key} {have!r} -> {wanted!r} (from the recipe)")
            cfg = dataclasses.replace(cfg, **{key: wanted})
        else:
            raise UserError(
                f"model.{key} is {wanted!r} in the recipe but {have!r} in init {init_path}: "
                "a finetune keeps the checkpoint's shape (remove the key from the recipe)"
            )
    return cfg


def _check_run_tokenizer(run_dir: Path, tok) -> None:
    """Resuming a task run needs the same tokenizer its checkpoints were trained with."""
    existing = run_dir / tokenizer.TOKENIZER_FILE
    if checkpoint.newest_in_run(run_dir) is None or not existing.is_file():
        return
    if tokenizer.load(existing).get_vocab() != tok.get_vocab():
        raise UserError(
            f"cannot resume {run_dir}: it was trained from a checkpoint with a different "
            "tokenizer than init's (use --fresh for a new run folder)"
        )


# --------------------------------------------------------------------------- using a classifier


def classifier_inputs(lines: Iterable[str], fields: list[str], fmt: str) -> Iterator[dict]:
    """Each non-empty line is one input: a JSON object with the task's fields, or (single
    text) the text itself."""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        text = line.rstrip("\n")
        if text.lstrip().startswith("{"):
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                raise UserError(f"input line {n}: not valid JSON ({e.msg})") from None
            yield {"where": f"input line {n}", "record": record}
        elif fmt == "single":
            yield {"where": f"input line {n}", "record": {fields[0]: text}}
        else:
            example = json.dumps({f: "..." for f in fields})
            raise UserError(f"input line {n}: a {fmt} classifier reads JSON lines like {example}")


def classify_run(loaded: checkpoint.Loaded, tok, model: GPT, prompts: Iterable[str], on_result):
    """`gptcli sample` on a classifier checkpoint: a label distribution per input."""
    info = loaded.info["task"]
    task_cfg = TaskConfig(
        kind="classify",
        format=info["format"],
        fields=info["fields"],
        label_field=info["label_field"],
    )
    task = ClassifyTask(task_cfg, tok, loaded.config.block_size, info["label_names"])
    names = task.label_names
    device = next(model.parameters()).device
    results = []
    lines = (line for prompt in prompts for line in prompt.splitlines())
    for item in classifier_inputs(lines, task.fields, task.format):
        record, where = item["record"], item["where"]
        segs = task.segments(record, where)
        rows, _ = task.rows(segs, task.token_ids([segs]))
        probs = task.predict(model, [Example(rows, 0)], device)[0]
        result: dict[str, Any] = {"input": record}
        if task.format == "choice":
            best = int(probs.argmax())
            result.update(label=best, probs=[round(p, 5) for p in probs.tolist()])
        else:
            best_name = names[int(probs.argmax())]
            result.update(
                label=best_name,
                probs={n: round(p, 5) for n, p in zip(names, probs.tolist(), strict=False)},
            )
        gold_field = task.task.label_field
        if gold_field in record:
            gold = (
                task.label_of(record, where, len(rows))
                if task.format == "choice"
                else names[label_index(record[gold_field], names, where)]
            )
            result["gold"] = gold
            result["correct"] = gold == result["label"]
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results
