"""`gptcli chat`: a conversation with a checkpoint, in a terminal or one JSON line at a time.

An SFT checkpoint renders the conversation with its chat template and a reply ends at the
template's end token; a base language model has no template, so it continues the
conversation's text as one document. Replies come from the inference engine as events (text
pieces, then a finish) that the terminal and the JSON-lines mode each present their own way.
Under a constraint (--json-schema) every reply is output it allows.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from gptcli import console, constrain
from gptcli.console import Terminated, UserError
from gptcli.constrain import Constraint
from gptcli.engine import Engine, Event, Finish, LoadedModel, Piece, Request, build, check_model
from gptcli.recipe import SampleConfig
from gptcli.tasks import sft

try:  # line editing and history at the prompt, where the platform has it
    import readline
except ImportError:  # pragma: no cover - Windows
    readline = None

HELP = "/reset clears the conversation, /system TEXT sets the system message, /exit or Ctrl-D quits"


@dataclass
class Talk:
    """A model to talk to: the loaded checkpoint, the engine that writes its replies, and the
    constraint every reply keeps (None: free text)."""

    lm: LoadedModel
    engine: Engine
    constraint: Constraint | None = None
    matcher: constrain.Matcher | None = None  # the last reply's, under a constraint
    compilers: constrain.Compilers = field(init=False)

    def __post_init__(self) -> None:
        self.compilers = constrain.Compilers(self.lm.tok, self.lm.model.cfg.vocab_size)

    def reply(self, ids: list[int], params: SampleConfig, seed: int | None) -> Iterator[Event]:
        """One reply to ids: text pieces as they become final, then its Finish."""
        matchers = None
        if self.constraint is not None:
            matchers = self.compilers.matchers(self.constraint, 1, self.lm.template)
            self.matcher = matchers[0]
        request = Request(ids, params, seed, 1, self.lm.enders(chat=True), matchers=matchers)
        return self.engine.generate(request)

    def warn_if_cut(self, finish: Finish, params: SampleConfig) -> None:
        """A constrained reply that --max-new-tokens ended early is named on stderr."""
        constrain.warn_if_cut(self.matcher, finish.reason, "the reply", params.max_new_tokens)


def load(
    checkpoint_path: str | None,
    overrides: dict[str, object],
    dtype: str,
    command: str,
    constraint: Constraint | None = None,
) -> Talk:
    """A language model ready for replies, one at a time (a classifier is refused)."""
    constrain.check_stop(constraint, overrides.get("stop"), "--stop")
    lm = build(check_model(checkpoint_path, command, overrides, dtype))
    lm.defaults = constrain.without_stops(lm.defaults, constraint)
    return Talk(lm, Engine(lm.model, lm.tok, slots=1), constraint)


def collect_reply(talk: Talk, messages: list[dict], params: SampleConfig, seed) -> dict:
    """One whole reply to a conversation (the JSON-lines mode's answer)."""
    ids = fit(talk.lm, messages, params)
    text, reason, tokens = "", "length", 0
    for event in talk.reply(ids, params, seed):
        if isinstance(event, Piece):
            text += event.text
        else:
            reason, tokens = reply_reason(event.reason), event.tokens
            talk.warn_if_cut(event, params)
    return {"role": "assistant", "content": text, "finish_reason": reason, "tokens": tokens}


def reply_reason(reason: str) -> str:
    """The end token is a reply's natural stop: OpenAI and the JSON-lines mode say "stop"."""
    return "stop" if reason == "eos" else reason


# --------------------------------------------------------------------------- the conversation


def fit(lm: LoadedModel, messages: list[dict], params: SampleConfig) -> list[int]:
    """The prompt for messages, dropping the oldest turns (never the system message or the last
    message) until it leaves room for a reply in the context; says so when it drops any."""
    room = lm.block - min(params.max_new_tokens, lm.block // 2)
    dropped = 0
    ids = lm.chat_ids(messages)
    while len(ids) > room:
        first = next((i for i, m in enumerate(messages) if m["role"] != "system"), None)
        if first is None or first == len(messages) - 1:
            break
        messages.pop(first)
        dropped += 1
        ids = lm.chat_ids(messages)
    if dropped:
        console.info(
            f"chat: dropped the oldest {dropped} message{'s' if dropped > 1 else ''} to fit the "
            f"context ({lm.block} tokens)"
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


def json_lines(talk: Talk, lines: Iterable[str], seed: int | None) -> Iterator[dict]:
    """The scriptable mode: each line a JSON message list, each answer one reply object."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            value = None
        messages = parse_messages(value, f"stdin line {number}")
        yield collect_reply(talk, messages, talk.lm.defaults, seed)


class Conversation:
    """The interactive session's state: the system message and the turns so far."""

    def __init__(self, talk: Talk) -> None:
        self.talk = talk
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
        ids = fit(self.talk.lm, messages, self.talk.lm.defaults)
        self.turns = [m for m in messages if m["role"] != "system"]
        answer, finish = "", None
        try:
            for event in self.talk.reply(ids, self.talk.lm.defaults, seed):
                if isinstance(event, Piece):
                    answer += event.text
                    show(event.text)
                else:
                    finish = event
        except Terminated:
            raise
        except KeyboardInterrupt:
            show("\n")
            console.info("chat: reply cancelled")
            self.turns.pop()
            return
        show("\n")
        if finish is not None:
            self.talk.warn_if_cut(finish, self.talk.lm.defaults)
        self.turns.append({"role": "assistant", "content": answer})


def read_line() -> str:
    """The next line typed at the prompt. A closed stdin (`<&-`: Python then has no sys.stdin)
    is the end of input, as Ctrl-D is."""
    if sys.stdin is None:
        raise EOFError
    return input("> ")


def interactive(talk: Talk, seed: int | None) -> None:
    """The terminal loop. Ctrl-C at an empty prompt and SIGTERM anywhere propagate (exit 130,
    143); Ctrl-D or a closed stdin returns (exit 0)."""
    if not talk.lm.template:
        console.info(
            f"chat: {talk.lm.ckpt} has no chat template (not an SFT checkpoint): the model "
            "continues your text"
        )
    console.info(f"chat with {talk.lm.name}: {HELP}")
    conversation = Conversation(talk)
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
            if not conversation.command(line):
                return
            continue
        conversation.reply(line, seed, lambda piece: console.out(piece, end=""))


def run(
    checkpoint_path: str | None,
    overrides: dict[str, object],
    seed: int | None = None,
    dtype: str = "auto",
    lines: Iterable[str] | None = None,
    on_reply: Callable[[dict], None] | None = None,
    constraint: Constraint | None = None,
) -> None:
    """`gptcli chat`: the terminal loop, or (lines given) one JSON reply per JSON input line;
    under a constraint every reply is output it allows."""
    talk = load(checkpoint_path, overrides, dtype, "chat", constraint)
    try:
        if lines is None:
            interactive(talk, seed)
            return
        if not talk.lm.template:
            console.info(f"chat: {talk.lm.ckpt} has no chat template: replies continue the text")
        for reply in json_lines(talk, lines, seed):
            (on_reply or (lambda r: console.out(json.dumps(r, ensure_ascii=False))))(reply)
        sys.stdout.flush()
    finally:
        talk.engine.close()
