"""`gptcli chat`: a conversation with a checkpoint, and the reply engine `serve` shares.

An SFT checkpoint renders the conversation with its chat template and a reply ends at the
template's end token; a base language model has no template, so it continues the
conversation's text as one document. Replies stream as events (text pieces, then a finish per
row) that the terminal, the JSON-lines mode and the HTTP server each present their own way.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gptcli import console, generate, memory, tokenizer
from gptcli.checkpoint_tensors import build_model
from gptcli.console import Terminated, UserError
from gptcli.device import dtype_name, pick_device
from gptcli.load import load as load_model
from gptcli.load import metadata
from gptcli.load import resolve as resolve_model
from gptcli.model import GPT
from gptcli.recipe import ModelConfig, SampleConfig
from gptcli.tasks import sft

try:  # line editing and history at the prompt, where the platform has it
    import readline
except ImportError:  # pragma: no cover - Windows
    readline = None

HELP = "/reset clears the conversation, /system TEXT sets the system message, /exit or Ctrl-D quits"


@dataclass
class Engine:
    """A loaded checkpoint ready to reply: its model, tokenizer and how a reply ends."""

    ckpt: Path
    name: str  # the model's name in the API: its run folder's name
    model: GPT
    tok: Any
    template: bool  # SFT checkpoints reply in the chat template; others continue text
    defaults: SampleConfig  # the run's `sample:` settings with the command's flags on top
    dtype: str

    @property
    def block(self) -> int:
        return self.model.cfg.block_size

    @property
    def eot(self) -> int:
        return tokenizer.eot_id(self.tok)

    def text_ids(self, text: str) -> list[int]:
        """A plain prompt: documents in training follow <|endoftext|>, as in `gptcli sample`."""
        return tokenizer.document_ids(self.tok, text)

    def chat_ids(self, messages: list[dict]) -> list[int]:
        """The conversation as the model reads it before its reply."""
        if not self.template:
            return self.text_ids("".join(m["content"] for m in messages))
        ids, _ = sft.chat_ids(self.tok, messages, add_generation_prompt=True)
        return ids

    def enders(self, chat: bool) -> set[int]:
        """Tokens that end a reply: <|endoftext|>, and in a chat any token that opens a turn."""
        if not (chat and self.template):
            return {self.eot}
        return {self.eot, *(self.tok.token_to_id(t) for t in sft.CHAT_TOKENS)}

    def eos(self, chat: bool) -> int:
        return self.tok.token_to_id(sft.END) if chat and self.template else self.eot


def model_name(ckpt: Path) -> str:
    """RUN/checkpoints/step-N is called RUN; any other folder by its own name."""
    return ckpt.parent.parent.name if ckpt.parent.name == "checkpoints" else ckpt.name


@dataclass
class Checked:
    """What a model's files say before its weights load: a server checks all of this, then
    binds its port, then builds the model."""

    ckpt: Path
    name: str
    cfg: ModelConfig
    tok: Any
    template: bool
    defaults: SampleConfig
    command: str


def check(
    checkpoint_path: str | None, overrides: dict[str, object], dtype: str, command: str
) -> Checked:
    """A language model's metadata, tokenizer and reply settings, checked without reading its
    weights; a classifier is refused (it has no text to give)."""
    ckpt = resolve_model(checkpoint_path)
    defaults = generate.load_params(ckpt, overrides)
    generate.pick_dtype(dtype, pick_device("auto"))  # a bad --dtype fails before anything loads
    cfg, info = metadata(ckpt)
    task = info["task"]
    kind = task.get("kind", "lm")
    if kind == "classify":
        raise UserError(
            f"{command}: {ckpt} is a classifier (it predicts labels, not text); "
            "pick a language model with -c"
        )
    template = kind == "sft"
    if template and task.get("template", sft.CHAT_TEMPLATE) != sft.CHAT_TEMPLATE:
        raise UserError(
            f"{command}: {ckpt} uses the chat template {task['template']!r}; this gptcli "
            f"knows {sft.CHAT_TEMPLATE} (upgrade gptcli)"
        )
    tok = tokenizer.load(ckpt / tokenizer.TOKENIZER_FILE)
    if checkpoint_path is None:
        console.info(f"{command}: using {ckpt}")
    return Checked(ckpt, model_name(ckpt), cfg, tok, template, defaults, command)


def build(checked: Checked, dtype: str) -> Engine:
    """The checked model's weights, read and built in the dtype picked for this device."""
    device = pick_device("auto")
    loaded = load_model(checked.ckpt)
    memory.check_inference(loaded.config, 1, dtype, device, checked.command)
    model = build_model(loaded, device).eval()  # first: it names weights that disagree
    weights = generate.pick_dtype(dtype, device, loaded.config)
    model = model.to(weights)
    return Engine(
        checked.ckpt,
        checked.name,
        model,
        checked.tok,
        checked.template,
        checked.defaults,
        dtype_name(weights),
    )


def load(
    checkpoint_path: str | None, overrides: dict[str, object], dtype: str, command: str
) -> Engine:
    """Load a language model for replies (check, then build)."""
    return build(check(checkpoint_path, overrides, dtype, command), dtype)


# --------------------------------------------------------------------------- reply events


@dataclass
class Piece:
    """New text of one row, and the log-probabilities of the tokens it came from."""

    row: int
    text: str
    logprobs: list[dict] = dataclasses.field(default_factory=list)


@dataclass
class Finish:
    """A row is done: why ('stop' or 'length') and how many tokens it generated."""

    row: int
    reason: str
    tokens: int


def token_logprob(tok, token: int, scores: torch.Tensor, top: int) -> dict:
    """One generated token's text, log-probability and the `top` likeliest alternatives."""
    entry = {"token": tokenizer.decode(tok, [token]), "logprob": scores[token].item()}
    if top:
        values, ids = torch.topk(scores, min(top, scores.numel()))
        entry["top"] = {
            tokenizer.decode(tok, [i]): v
            for i, v in zip(ids.tolist(), values.tolist(), strict=True)
        }
    return entry


def reply_events(
    engine: Engine,
    ids: list[int],
    params: SampleConfig,
    seed: int | None = None,
    n: int = 1,
    chat: bool = True,
    cancelled: Callable[[], bool] = lambda: False,
    top_logprobs: int | None = None,
    ignore_eos: bool = False,
    on_token: Callable[[int], None] | None = None,
    deadline: float | None = None,
) -> Iterator[Piece | Finish]:
    """Generate n replies to ids as one batch: text pieces as they become final (never part of
    a stop string), then one Finish per row. Stops early, without a Finish, once cancelled().
    ignore_eos: the end tokens are text like any other (fixed-length replies, as benchmarks
    want); on_token(row) hears of each generated token; past deadline (time.monotonic()) every
    row ends with what it has, as 'length'."""
    ids = ids[-engine.block :]  # the window keeps a long prompt's last tokens
    enders = set() if ignore_eos else engine.enders(chat)
    streams = [generate.TextStream(engine.tok, ids, params.stop) for _ in range(n)]
    finished, done = [False] * n, [False] * n
    counts = [0] * n
    pending: list[list[dict]] = [[] for _ in range(n)]
    scores: list[torch.Tensor] | None = [] if top_logprobs is not None else None

    def finish(row: int, reason: str) -> Iterator[Piece | Finish]:
        finished[row] = done[row] = True
        tail = streams[row].finish()
        if tail or pending[row]:
            yield Piece(row, tail, pending[row])
        yield Finish(row, "stop" if streams[row].stopped else reason, counts[row])

    eos = None if ignore_eos else engine.eos(chat)
    steps = generate.generate(engine.model, ids, params, seed, eos, n, finished, scores)
    try:
        for step in steps:
            if cancelled():
                return
            step_scores = scores.pop() if scores else None
            for row, token in enumerate(step):
                if token is None or done[row]:
                    continue
                if token in enders:
                    yield from finish(row, "stop")
                    continue
                counts[row] += 1
                if on_token is not None:
                    on_token(row)
                if step_scores is not None:
                    entry = token_logprob(engine.tok, token, step_scores[row], top_logprobs or 0)
                    pending[row].append(entry)
                text = streams[row].push(token)
                if streams[row].stopped:
                    yield from finish(row, "stop")
                elif text:
                    yield Piece(row, text, pending[row])
                    pending[row] = []
            if deadline is not None and time.monotonic() >= deadline:
                break
        for row in range(n):
            if not done[row]:
                yield from finish(row, "length")
    finally:
        steps.close()


def collect_reply(engine: Engine, messages: list[dict], params: SampleConfig, seed) -> dict:
    """One whole reply to a conversation (the JSON-lines mode's answer)."""
    ids = fit(engine, messages, params)
    text, reason, tokens = "", "length", 0
    for event in reply_events(engine, ids, params, seed):
        if isinstance(event, Piece):
            text += event.text
        else:
            reason, tokens = event.reason, event.tokens
    return {"role": "assistant", "content": text, "finish_reason": reason, "tokens": tokens}


# --------------------------------------------------------------------------- the conversation


def fit(engine: Engine, messages: list[dict], params: SampleConfig) -> list[int]:
    """The prompt for messages, dropping the oldest turns (never the system message or the last
    message) until it leaves room for a reply in the context; says so when it drops any."""
    room = engine.block - min(params.max_new_tokens, engine.block // 2)
    dropped = 0
    ids = engine.chat_ids(messages)
    while len(ids) > room:
        first = next((i for i, m in enumerate(messages) if m["role"] != "system"), None)
        if first is None or first == len(messages) - 1:
            break
        messages.pop(first)
        dropped += 1
        ids = engine.chat_ids(messages)
    if dropped:
        console.info(
            f"chat: dropped the oldest {dropped} message{'s' if dropped > 1 else ''} to fit the "
            f"context ({engine.block} tokens)"
        )
    return ids


def parse_messages(value: object, where: str) -> list[dict]:
    """A conversation: a non-empty list of {role, content} with known roles and text content."""
    ok = (
        isinstance(value, list)
        and value
        and all(
            isinstance(m, dict) and m.get("role") in sft.ROLES and isinstance(m.get("content"), str)
            for m in value
        )
    )
    if not ok:
        raise UserError(
            f"{where}: expected a JSON list of messages like "
            f'[{{"role": "user", "content": "Hi"}}] with roles {", ".join(sft.ROLES)}'
        )
    return [{"role": m["role"], "content": m["content"]} for m in value]


def json_lines(engine: Engine, lines: Iterable[str], seed: int | None) -> Iterator[dict]:
    """The scriptable mode: each line a JSON message list, each answer one reply object."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            value = None
        messages = parse_messages(value, f"stdin line {number}")
        yield collect_reply(engine, messages, engine.defaults, seed)


class Conversation:
    """The interactive session's state: the system message and the turns so far."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.system: str | None = None
        self.turns: list[dict] = []

    def messages(self) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns

    def command(self, line: str) -> bool:
        """Handle a /command; False means quit."""
        name, _, rest = line.partition(" ")
        if name == "/exit":
            return False
        if name == "/reset":
            self.turns = []
            console.info("chat: conversation cleared")
        elif name == "/system":
            self.system = rest.strip() or None
            console.info("chat: system message " + ("set" if self.system else "cleared"))
        else:
            console.info(f"chat: unknown command {name}; {HELP}")
        return True

    def reply(self, text: str, seed: int | None, show: Callable[[str], None]) -> None:
        """Stream the model's reply to text; Ctrl-C cancels it and forgets the turn (SIGTERM
        still ends the program: it is how a supervisor stops it)."""
        self.turns.append({"role": "user", "content": text})
        messages = self.messages()
        ids = fit(self.engine, messages, self.engine.defaults)
        self.turns = [m for m in messages if m["role"] != "system"]
        answer = ""
        try:
            for event in reply_events(self.engine, ids, self.engine.defaults, seed):
                if isinstance(event, Piece):
                    answer += event.text
                    show(event.text)
        except Terminated:
            raise
        except KeyboardInterrupt:
            show("\n")
            console.info("chat: reply cancelled")
            self.turns.pop()
            return
        show("\n")
        self.turns.append({"role": "assistant", "content": answer})


def read_line() -> str:
    """The next line typed at the prompt. A closed stdin (`<&-`: Python then has no sys.stdin)
    is the end of input, as Ctrl-D is."""
    if sys.stdin is None:
        raise EOFError
    return input("> ")


def interactive(engine: Engine, seed: int | None) -> None:
    """The terminal loop. Ctrl-C at an empty prompt and SIGTERM anywhere propagate (exit 130,
    143); Ctrl-D or a closed stdin returns (exit 0)."""
    if not engine.template:
        console.info(
            f"chat: {engine.ckpt} has no chat template (not an SFT checkpoint): the model "
            "continues your text"
        )
    console.info(f"chat with {engine.name}: {HELP}")
    talk = Conversation(engine)
    while True:
        try:
            line = read_line()
        except EOFError:
            console.out("")
            return
        except KeyboardInterrupt as e:
            half_typed = readline is not None and readline.get_line_buffer().strip()
            if isinstance(e, Terminated) or not half_typed:
                raise
            console.out("")  # as in a shell: a half-typed line is dropped, the session stays
            continue
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            if not talk.command(line):
                return
            continue
        talk.reply(line, seed, lambda piece: console.out(piece, end=""))


def run(
    checkpoint_path: str | None,
    overrides: dict[str, object],
    seed: int | None = None,
    dtype: str = "auto",
    lines: Iterable[str] | None = None,
    on_reply: Callable[[dict], None] | None = None,
) -> None:
    """`gptcli chat`: the terminal loop, or (lines given) one JSON reply per JSON input line."""
    engine = load(checkpoint_path, overrides, dtype, "chat")
    if lines is None:
        interactive(engine, seed)
        return
    if not engine.template:
        console.info(f"chat: {engine.ckpt} has no chat template: replies continue the text")
    for reply in json_lines(engine, lines, seed):
        (on_reply or (lambda r: console.out(json.dumps(r, ensure_ascii=False))))(reply)
    sys.stdout.flush()
