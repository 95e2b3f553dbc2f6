"""Supervised finetuning: conversations in a chat template, loss on the replies only.

The template (gptcli-chat-v1) is <|endoftext|>, then <|role|>content<|end|> per message, then
<|assistant|> to ask for a reply; its special tokens are added to the tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from gptcli import console, tokenizer
from gptcli.console import UserError
from gptcli.model import GPT
from gptcli.recipe import Recipe, task_fields
from gptcli.tasks.base import (
    LengthOrder,
    evaluate_loss,
    pad,
    split_dev,
    text_field,
)

ROLES = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
END = "<|end|>"
CHAT_TOKENS = [*ROLES.values(), END]
CHAT_TEMPLATE = "gptcli-chat-v1"  # <|role|>content<|end|> per turn, then <|assistant|>


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
    prompt = text_field(record, fields[0], where)
    response = text_field(record, fields[1], where)
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


class SFTTask:
    """Supervised finetuning: chat-formatted examples, loss on the response tokens only."""

    checkpoint_info = {"task": {"kind": "sft", "template": CHAT_TEMPLATE}}

    def __init__(
        self, recipe: Recipe, tok, block_size: int, train: list[tuple], dev: list[tuple] | None
    ) -> None:
        """train and dev: (where, record) of each example (dev None: held out of train)."""
        self.tok, self.block_size = tok, block_size
        fields = task_fields(recipe.task)
        train_ex = self.encode(train, str(recipe.data.source), fields)
        if dev is not None:
            dev_ex = self.encode(dev, recipe.data.dev, fields)
        else:
            train_ex, dev_ex = split_dev(train_ex, recipe)
        self.train_examples, self.dev_examples = train_ex, dev_ex
        b = self.batch_size = recipe.train.batch_size
        self.order = LengthOrder([len(x) for x, _ in train_ex], b, recipe.seed)
        dev = dev_ex[: b * recipe.train.eval_batches]
        self.dev_batches = [pad(*zip(*dev[i : i + b], strict=True)) for i in range(0, len(dev), b)]
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
        return pad(*zip(*(self.train_examples[i] for i in self.order.indices(index)), strict=False))

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return model(*batch)[1]

    def evaluate(self, model: GPT, device, amp) -> dict:
        return {"val_loss": round(evaluate_loss(model, self.dev_batches, device, amp), 5)}

    def summary(self, last: dict) -> tuple[dict, str]:
        if last.get("val_loss") is None:
            return {}, ""
        return {}, f"done: dev loss on response tokens {last['val_loss']:.4f}"
