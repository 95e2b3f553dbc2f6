"""Constrained decoding: output that always parses (a JSON Schema, any JSON object, a regex, one
of a few choices), built on llguidance (the optional `structured` extra).

A `Constraint` is what was asked, checked when it is made (a bad schema or regex fails before
any model loads). A `Compiler` is llguidance's view of one model's vocabulary (its
tokenizer.json, the model's vocabulary size, its end tokens), built once per model. A
`Matcher` follows one row's output token by token and says which tokens may come next.

The engine's step, per row with a matcher:
    logits -> mask_logits (-inf outside the allowed set) -> repetition penalty, temperature,
    top-k/p, min-p (sampling.next_tokens) -> token -> matcher.advance(token)
The mask comes first, on the raw logits, so every sampling control acts within the allowed
set and can never empty it. A row ends when its matcher `is_done()` (the constraint is
complete and nothing may follow: finish reason "stop"); while the output so far is complete
but could go on, the end token is allowed too and ending there is a "stop" as well. An end
token is allowed only where the output is complete, so a row cut by the token budget instead
is unfinished output (finish reason "length").
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tokenizers import Tokenizer

from gptcli import console, tokenizer
from gptcli.console import UserError
from gptcli.files import read_json
from gptcli.recipe import SampleConfig
from gptcli.tasks import sft

try:  # the optional extra: every use names the install line when it is missing
    import llguidance
except ImportError:
    llguidance = None

INSTALL = "pip install 'gptcli[structured]'"
REGEX_DIALECT = "regexes use Rust regex syntax: no lookaround and no backreferences"
# JSON as json.dumps writes it ({"a": 1, "b": [2, 3]}): one spelling per value, so a small
# model spends no tokens on whitespace and cannot ramble in it; a schema's own "x-guidance"
# options override this
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
Kind = Literal["json_schema", "json_object", "regex", "choice"]
CLI_FLAGS = ("--json-schema", "--json-object", "--regex", "--choice")


def require() -> Any:
    """The llguidance module, or exit 2 with the install line."""
    if llguidance is None:
        raise UserError(
            f"structured output (JSON Schema, regex, choice) needs llguidance: {INSTALL}"
        )
    return llguidance


# --------------------------------------------------------------------------- what was asked


@dataclasses.dataclass(frozen=True)
class Constraint:
    """One output constraint, checked when made; `grammar` is llguidance's compiled form.

    value: the schema (json_schema), the pattern (regex), the options (choice), None
    (json_object). where: the flag or request field it came from, named in every message.
    """

    kind: Kind
    value: Any
    where: str
    grammar: str = dataclasses.field(repr=False, compare=False)

    @property
    def flag(self) -> str:
        """Where it came from, without its value: "--json-schema", "response_format"."""
        return self.where.split()[0]

    def describe(self) -> str:
        """A short line for logs and results: what every output must be."""
        if self.kind == "json_schema":
            return f"JSON matching the schema from {self.where}"
        if self.kind == "json_object":
            return "a JSON object"
        if self.kind == "regex":
            return f"text matching /{self.value}/"
        return "one of " + ", ".join(json.dumps(c, ensure_ascii=False) for c in self.value)


def json_schema(schema: Any, where: str) -> Constraint:
    """Output valid against a JSON Schema (an object); an unsupported keyword is named."""
    if not isinstance(schema, dict):
        raise UserError(f"{where}: a JSON Schema must be a JSON object, got {_type(schema)}")
    lib = require()
    grammar = lib.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_LAYOUT)
    _check(grammar, where, "the schema")
    return Constraint("json_schema", schema, where, grammar)


def json_object(where: str) -> Constraint:
    """Any JSON object (OpenAI's response_format {"type": "json_object"})."""
    lib = require()
    grammar = lib.LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=JSON_LAYOUT)
    return Constraint("json_object", None, where, grammar)


def regex(pattern: Any, where: str) -> Constraint:
    """Output that the whole pattern matches (Rust regex syntax)."""
    if not isinstance(pattern, str) or not pattern:
        raise UserError(f"{where}: expected a non-empty regex string, got {pattern!r}")
    lib = require()
    grammar = lib.LLMatcher.grammar_from_regex(pattern)
    _check(grammar, where, f"the regex {pattern!r}")
    return Constraint("regex", pattern, where, grammar)


def choice(options: Any, where: str) -> Constraint:
    """Output that is exactly one of the options."""
    ok = isinstance(options, (list, tuple)) and options
    if not ok or not all(isinstance(o, str) and o for o in options):
        raise UserError(f"{where}: expected a list of non-empty strings, got {options!r}")
    lib = require()
    grammar = lib.grammar_from("choice", list(options))
    _check(grammar, where, "the choices")
    return Constraint("choice", tuple(options), where, grammar)


def check_stop(constraint: Constraint | None, stop: Any, field: str) -> None:
    """Stop strings do not go with a constraint: one could cut the output before it is
    complete (the constraint ends it there)."""
    if constraint is not None and stop:
        raise UserError(
            f"{field} does not go with {constraint.flag}: a stop string could cut "
            f"the output before it is complete (the constraint ends it there); drop {field}"
        )


def without_stops(params: SampleConfig, constraint: Constraint | None) -> SampleConfig:
    """A run's own `sample.stop` strings are left out under a constraint, saying so."""
    if constraint is None or not params.stop:
        return params
    console.info(f"the run's sample.stop strings are not used under {constraint.flag}")
    return dataclasses.replace(params, stop=[])


def _type(value: Any) -> str:
    """A JSON value's kind, as a message names it."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return {dict: "an object", list: "an array", str: "a string"}.get(type(value), "a number")


def _check(grammar: str, where: str, what: str) -> None:
    """Exit 2 (a 400 in the server) naming what llguidance refused, in one line."""
    failed, messages = require().LLMatcher.validate_grammar_with_warnings(grammar)
    if failed:
        raise UserError(f"{where}: {what} is not usable: {problem(messages[0])}")


def problem(message: str) -> str:
    """llguidance's multi-line error as one line: the regex parser's own `error:` line, an
    unimplemented JSON Schema keyword by name, else the first line without its position."""
    unimplemented = re.search(r"Unimplemented keys: (\[.*?\])", message)
    if unimplemented:
        keys = json.loads(unimplemented.group(1))
        named = ", ".join(repr(k) for k in keys)
        verb = "is" if len(keys) == 1 else "are"
        return (
            f"JSON Schema keyword{'s' * (len(keys) > 1)} {named} {verb} not supported (drop "
            "it, or say it with anyOf, enum or pattern)"
        )
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    detail = next((ln.removeprefix("error: ") for ln in lines if ln.startswith("error: ")), None)
    if detail is not None:
        return f"{detail} ({REGEX_DIALECT})"
    first = re.sub(r"^at \d+\(\d+\): ", "", lines[0] if lines else "rejected")
    return first


# --------------------------------------------------------------------------- from the CLI, the API


def from_cli(
    json_schema_file: str | None = None,
    json_object_flag: bool = False,
    regex_pattern: str | None = None,
    choices: Sequence[str] | None = None,
) -> Constraint | None:
    """The constraint that `--json-schema FILE`, `--json-object`, `--regex RE` or `--choice A
    --choice B ...` ask for (at most one of them), or None."""
    given = [
        json_schema_file is not None,
        json_object_flag,
        regex_pattern is not None,
        bool(choices),
    ]
    if sum(given) > 1:
        named = [flag for flag, on in zip(CLI_FLAGS, given, strict=True) if on]
        raise UserError(f"{' and '.join(named)} do not go together: give one constraint")
    if json_schema_file is not None:
        path = Path(json_schema_file)
        if not path.is_file():
            raise UserError(f"--json-schema: {path} not found (pass a JSON Schema file)")
        return json_schema(read_json(path), f"--json-schema {path}")
    if json_object_flag:
        return json_object("--json-object")
    if regex_pattern is not None:
        return regex(regex_pattern, "--regex")
    if choices:
        return choice(list(choices), "--choice")
    return None


def from_request(body: dict) -> Constraint | None:
    """The constraint of an API request body: OpenAI's response_format ({"type": "text" |
    "json_object" | "json_schema", "json_schema": {"name", "schema", "strict"}}) or vLLM's
    structured_outputs ({"json" | "regex" | "choice" | "json_object": ...}), or None.
    Bad values raise UserError naming the field (the server answers 400)."""
    fmt, structured = body.get("response_format"), body.get("structured_outputs")
    if fmt is not None and structured is not None:
        raise UserError("give response_format or structured_outputs, not both")
    if structured is not None:
        return from_structured_outputs(structured)
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise UserError(f"response_format: expected an object, got {_type(fmt)}")
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return json_object("response_format")
    if kind != "json_schema":
        raise UserError(
            f"response_format.type: expected text, json_object or json_schema, got {kind!r}"
        )
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict) or "schema" not in spec:
        raise UserError(
            'response_format.json_schema: expected an object {"name", "schema", "strict"} '
            "holding the schema"
        )
    if "name" in spec and not isinstance(spec["name"], str):
        raise UserError(
            f"response_format.json_schema.name: expected a string, got {spec['name']!r}"
        )
    return json_schema(spec["schema"], "response_format.json_schema.schema")


STRUCTURED_KEYS = ("json", "regex", "choice", "json_object")


def from_structured_outputs(spec: Any) -> Constraint | None:
    """vLLM's structured_outputs: exactly one of json (a schema, or its JSON text), regex,
    choice, json_object (true)."""
    if not isinstance(spec, dict):
        raise UserError(f"structured_outputs: expected an object, got {_type(spec)}")
    unknown = sorted(k for k, v in spec.items() if k not in STRUCTURED_KEYS and v is not None)
    if unknown:
        raise UserError(
            f"structured_outputs.{unknown[0]} is not supported (use one of "
            f"{', '.join(STRUCTURED_KEYS)})"
        )
    given = [k for k in STRUCTURED_KEYS if spec.get(k) not in (None, False)]
    if len(given) > 1:
        raise UserError(f"structured_outputs: give one of {', '.join(given)}, not several")
    if not given:
        return None
    key = given[0]
    where, value = f"structured_outputs.{key}", spec[key]
    if key == "json":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise UserError(f"{where}: not valid JSON ({e})") from None
        return json_schema(value, where)
    if key == "regex":
        return regex(value, where)
    if key == "choice":
        return choice(value, where)
    if value is not True:
        raise UserError(f"{where}: expected true, got {value!r}")
    return json_object(where)


# --------------------------------------------------------------------------- one model's vocabulary


def end_ids(tok: Tokenizer, chat: bool) -> list[int]:
    """The tokens that end an output: the chat template's end of a reply, else <|endoftext|>."""
    if chat:
        end = tok.token_to_id(sft.END)
        if end is None:
            raise UserError(f"the tokenizer has no {sft.END} token (not a chat model)")
        return [end]
    return [tokenizer.eot_id(tok)]


class Compiler:
    """llguidance's view of one model's vocabulary, shared by all its matchers.

    vocab_size is the model's (it may exceed the tokenizer's: ids past the tokenizer's are
    padding, never allowed); end ids are the only tokens allowed once the output is complete.
    Building it reads every token's bytes (milliseconds to a fraction of a second at 50k
    tokens): build one per loaded model, not per request.
    """

    def __init__(self, tok: Tokenizer, vocab_size: int, end: Sequence[int]) -> None:
        lib = require()
        if vocab_size < tok.get_vocab_size():
            raise ValueError(f"vocab_size {vocab_size} < the tokenizer's {tok.get_vocab_size()}")
        self.vocab_size = vocab_size
        self.end_ids = tuple(end)
        self.words = (vocab_size + 31) // 32  # int32 words of one row's bitmask
        self.ll = lib.LLTokenizer(tok.to_str(), n_vocab=vocab_size, eos_token=list(end))

    def matcher(self, constraint: Constraint) -> Matcher:
        return Matcher(self, constraint)

    def matchers(self, constraint: Constraint, n: int) -> list[Matcher]:
        """n independent matchers (one per row of a request): compiled once, then copied."""
        first = self.matcher(constraint)
        return [first, *(first.fork() for _ in range(n - 1))]


class Compilers:
    """One model's Compilers, one per kind of output it ends (a plain continuation ends at
    <|endoftext|>, a chat reply at the template's end token), each built on first use and kept:
    a command or a server holds one for the model it loaded."""

    def __init__(self, tok: Tokenizer, vocab_size: int) -> None:
        self.tok, self.vocab_size = tok, vocab_size
        self.built: dict[bool, Compiler] = {}
        self.lock = threading.Lock()  # a server's request threads share it

    def get(self, chat: bool) -> Compiler:
        """chat: the output is a reply in the chat template (the model has one)."""
        with self.lock:
            if chat not in self.built:
                end = end_ids(self.tok, chat)
                self.built[chat] = Compiler(self.tok, self.vocab_size, end)
            return self.built[chat]

    def matchers(self, constraint: Constraint, n: int, chat: bool) -> list[Matcher]:
        """A request's matchers: one per row."""
        return self.get(chat).matchers(constraint, n)


class Matcher:
    """One row's position in its constraint: which tokens may come next, and the token taken."""

    def __init__(self, compiler: Compiler, constraint: Constraint, ll: Any = None) -> None:
        self.compiler = compiler
        self.constraint = constraint
        # log_level 0: llguidance's own stderr warnings stay quiet; errors are raised here
        self.ll = (
            ll
            if ll is not None
            else require().LLMatcher(compiler.ll, constraint.grammar, log_level=0)
        )
        if self.ll.is_error():
            raise UserError(
                f"{constraint.where}: not usable with this model's tokenizer: "
                f"{problem(self.ll.get_error())}"
            )

    def fork(self) -> Matcher:
        """An independent copy at the same position."""
        return Matcher(self.compiler, self.constraint, self.ll.deep_copy())

    def fill(self, bitmask: torch.Tensor) -> None:
        """Write the allowed set as bits into one contiguous CPU int32 row of compiler.words."""
        self.ll.unsafe_compute_mask_ptr(bitmask.data_ptr(), self.compiler.words * 4)
        self._raise_if_error()

    def allowed(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """(vocab_size,) bool: the tokens that may come next."""
        return allowed_masks([self], self.compiler.vocab_size, torch.device(device))[0]

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """logits (V,) with -inf outside the allowed set (a new tensor). On the CPU the bits
        are unpacked by numpy: one row's mask in a few operations (the engine masks each row
        on its own)."""
        if logits.device.type != "cpu":
            return mask_logits(logits.unsqueeze(0), [self])[0]
        if logits.numel() != self.compiler.vocab_size:
            raise ValueError(
                f"{logits.numel()} logits for a vocabulary of {self.compiler.vocab_size}"
            )
        bitmask = torch.empty(self.compiler.words, dtype=torch.int32)
        self.fill(bitmask)
        # token 32*i+j is bit j of word i: the words' bytes, least significant bit first
        bits = np.unpackbits(bitmask.numpy().view(np.uint8), bitorder="little")
        return logits.masked_fill(torch.from_numpy(bits[: logits.numel()]) == 0, float("-inf"))

    def advance(self, token: int) -> None:
        """Take the sampled token. A token outside the allowed set is a bug in the caller."""
        if not self.ll.consume_token(int(token)):
            raise RuntimeError(f"token {token} is outside the constraint: {self.ll.get_error()}")

    def is_done(self) -> bool:
        """Complete, and nothing but an end token may follow (or one was taken): stop here."""
        return self.ll.is_stopped()

    def is_accepting(self) -> bool:
        """The output so far is complete (it may still go on, e.g. a regex's optional tail)."""
        return self.ll.is_accepting()

    def _raise_if_error(self) -> None:
        if self.ll.is_error():
            raise RuntimeError(f"constraint matcher failed: {self.ll.get_error()}")


def cut_message(matcher: Matcher, which: str, budget: str) -> str:
    """The warning for an output the token budget (e.g. "--max-new-tokens 20") ended before its
    constraint did: finish reason "length"."""
    what = matcher.constraint.describe()
    if matcher.is_accepting():
        return (
            f"{which} reached {budget} where it was complete but could go on: it is {what}, "
            "perhaps cut short (finish reason length)"
        )
    return (
        f"{which} is cut: {budget} ended it before it was complete, so it is not {what} "
        f"(finish reason length); raise {budget.split()[0]}"
    )


def warn_if_cut(matcher: Matcher | None, reason: str, which: str, max_new_tokens: int) -> None:
    """A constrained output that --max-new-tokens ended ("length") is named on stderr."""
    if matcher is not None and reason == "length":
        budget = f"--max-new-tokens {max_new_tokens}"
        console.warn(cut_message(matcher, which, budget))


# --------------------------------------------------------------------------- batched masks


PARALLEL_MIN_THREADS = 4  # below this, llguidance's pool has a thread or two: no gain


@functools.cache
def _executor(threads: int) -> Any:
    """llguidance's thread pool: masks of several rows computed in parallel, GIL released."""
    return require().LLExecutor(num_threads=threads)


@functools.cache
def _bit_shifts(device: torch.device) -> torch.Tensor:
    return torch.arange(32, dtype=torch.int32, device=device)


def fill_bitmask(matchers: Sequence[Matcher | None], vocab_size: int) -> torch.Tensor:
    """(rows, ceil(vocab_size/32)) int32 on the CPU, bit j of word i set when token 32*i+j is
    allowed; a row without a matcher allows everything. Several rows are filled in parallel by
    llguidance's pool where torch has PARALLEL_MIN_THREADS threads or more, else one after
    another (on a busy 2-core machine the pool measured slower than the plain loop)."""
    words = (vocab_size + 31) // 32
    bitmask = torch.full((len(matchers), words), -1, dtype=torch.int32)
    rows = [(m, i) for i, m in enumerate(matchers) if m is not None]
    if any(m.compiler.vocab_size != vocab_size for m, _ in rows):
        raise ValueError(f"a matcher was built for another vocabulary size than {vocab_size}")
    threads = min(32, torch.get_num_threads())
    if len(rows) < 2 or threads < PARALLEL_MIN_THREADS:
        for m, i in rows:
            m.fill(bitmask[i])
        return bitmask
    _executor(threads).unsafe_compute_mask_ptr(
        [(m.ll, i) for m, i in rows], bitmask.data_ptr(), words * 4, len(matchers)
    )
    for m, _ in rows:
        m._raise_if_error()
    return bitmask


def unpack(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(rows, words) int32 bits -> (rows, vocab_size) bool, vectorised on bitmask's device."""
    bits = (bitmask.unsqueeze(-1) >> _bit_shifts(bitmask.device)) & 1
    return bits.view(bitmask.size(0), -1)[:, :vocab_size].bool()


def allowed_masks(
    matchers: Sequence[Matcher | None], vocab_size: int, device: torch.device
) -> torch.Tensor:
    """(rows, vocab_size) bool on device: each row's allowed tokens (all, for a None row)."""
    bitmask = fill_bitmask(matchers, vocab_size)
    if device.type == "cuda":  # a few KB: pinned, so the copy overlaps
        bitmask = bitmask.pin_memory().to(device, non_blocking=True)
    return unpack(bitmask.to(device), vocab_size)


def mask_logits(logits: torch.Tensor, matchers: Sequence[Matcher | None]) -> torch.Tensor:
    """(rows, V) logits with -inf outside each constrained row's allowed set; rows whose
    matcher is None are untouched, and with no matcher at all logits come back as they are
    (no cost for unconstrained sampling)."""
    if all(m is None for m in matchers):
        return logits
    allowed = allowed_masks(matchers, logits.size(-1), logits.device)
    return logits.masked_fill(~allowed, float("-inf"))


def advance(matchers: Sequence[Matcher | None], tokens: Sequence[int | None]) -> list[bool]:
    """Advance each row's matcher by its token (None rows and None tokens are skipped); per
    row, whether it is now done (True only for rows with a matcher)."""
    done = []
    for m, token in zip(matchers, tokens, strict=True):
        if m is not None and token is not None:
            m.advance(token)
        done.append(m is not None and m.is_done())
    return done
