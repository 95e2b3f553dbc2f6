"""GPT-1 classification: each example becomes token sequences, a linear head reads the final
hidden state of the extract token, and the LM loss on the same sequences is kept as an
auxiliary term (loss = task loss + lm_weight x LM loss).

Formats: single text, pair (entailment), similarity (both orders, final states added) and
multiple choice (one score per answer, softmax over them). Also the classifier's inference,
which `gptcli sample` uses on a classifier checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from gptcli import console, tokenizer
from gptcli.checkpoint_tensors import Loaded
from gptcli.console import UserError
from gptcli.device import autocast
from gptcli.model import GPT
from gptcli.recipe import Recipe, TaskConfig, task_fields
from gptcli.tasks.base import (
    LengthOrder,
    as_text,
    pad,
    required_field,
    split_dev,
    text_field,
)

START, DELIM, EXTRACT = "<|start|>", "<|delim|>", "<|extract|>"
CLASSIFY_TOKENS = [START, DELIM, EXTRACT]


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
    def for_training(
        cls, recipe: Recipe, tok, block_size: int, records: list[tuple], dev: list[tuple] | None
    ) -> ClassifyTask:
        """Encode the training and dev examples ((where, record) each; dev None: held out of
        train); label names come from the recipe or are learned from the training file."""
        source = str(recipe.data.source)
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
        if dev is not None:
            self.dev_examples = self.encode(dev, recipe.data.dev)
        else:
            self.train_examples, self.dev_examples = split_dev(self.train_examples, recipe)
        lengths = [sum(len(r) for r in ex.rows) for ex in self.train_examples]
        self.order = LengthOrder(lengths, self.batch_size, recipe.seed)
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
        a = text_field(record, a_field, where)
        if self.format == "single":
            return [(a, None)]
        b_value = required_field(record, rest[0], where)
        if self.format == "choice":
            if (
                not isinstance(b_value, list)
                or not b_value
                or not all(isinstance(c, str) for c in b_value)
            ):
                raise UserError(f"{where}: field {rest[0]!r} must be a non-empty list of strings")
            return [(a, c) for c in b_value]
        b = as_text(b_value, rest[0], where)
        return [(a, b), (b, a)] if self.format == "similarity" else [(a, b)]

    def label_of(self, record: dict, where: str, n_choices: int) -> int:
        value = required_field(record, self.task.label_field, where)
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
        x, y = pad(rows, targets)
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
            with autocast(device, amp):
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
    values = [required_field(r, field, where) for where, r in records]
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


def classify_run(loaded: Loaded, tok, model: GPT, prompts: Iterable[str], on_result):
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
