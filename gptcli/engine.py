"""The inference engine: one loader for every command that generates or scores text, and one
batched reply loop that every caller shares (continuous batching).

The engine owns the model, one KV cache of `slots` rows and the state of each running row. A
request (a prompt, its own sampling settings, n rows) waits until n slots are free, then joins
the running batch: its prompt is prefilled in chunks between decode steps, each sized to take
about one decode step, so rows already running are never stalled for long; every decode step
then advances all running rows by one token, each at its own position. A finished or cancelled
row frees its slot at once. Each row has its own random generator and settings, so the tokens a
request gets do not depend on what else runs beside it (up to float rounding: one row and many
rows take different matmul paths).

Callers submit requests from any thread and read each request's events (text pieces, then one
Finish per row) in order. A server's engine runs the model on a worker thread of its own, for
its many readers; a command with one reader (sample, chat, eval) runs it on that reader's thread,
one step whenever the events it waits for are not there yet: handing every token from one
thread to another costs a wake-up and a turn of the interpreter lock each, which at a small
model's few milliseconds a step made generating up to twice as slow.
"""

from __future__ import annotations

import copy
import dataclasses
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from gptcli import console, load, memory, tokenizer
from gptcli.checkpoint_tensors import build_model
from gptcli.console import UserError
from gptcli.device import (
    CPU_PROBES,
    autocast_dtype,
    cached_probe,
    dtype_name,
    faster_ratio,
    pick_device,
)
from gptcli.model import GPT
from gptcli.recipe import ModelConfig, SampleConfig
from gptcli.run import recipe_of
from gptcli.sampling import TextStream, next_tokens, token_logprob
from gptcli.tasks import sft

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
GOLDEN = 0x9E3779B97F4A7C15  # spreads a request's seed over its rows (row 0 keeps the seed)

# --------------------------------------------------------------------------- loading


@dataclass
class LoadedModel:
    """A checkpoint ready for inference: its model in the chosen dtype, tokenizer and defaults."""

    ckpt: Path
    name: str  # the model's name in the API: its run folder's name
    kind: str  # the finetune task it was trained for: lm, sft or classify
    model: GPT
    tok: Any
    defaults: SampleConfig  # the run's `sample:` settings with the command's flags on top
    source: load.Loaded  # what load gave: metadata a classifier needs (labels, format)

    @property
    def template(self) -> bool:
        """SFT checkpoints reply in the chat template; others continue text."""
        return self.kind == "sft"

    @property
    def block(self) -> int:
        return self.model.cfg.block_size

    @property
    def dtype(self) -> str:
        return dtype_name(self.model.wte.weight.dtype)

    @property
    def eot(self) -> int:
        return tokenizer.eot_id(self.tok)

    def text_ids(self, text: str) -> list[int]:
        """A plain prompt: documents in training follow <|endoftext|>."""
        return tokenizer.document_ids(self.tok, text)

    def chat_ids(self, messages: list[dict]) -> list[int]:
        """The conversation as the model reads it before its reply."""
        if not self.template:
            return self.text_ids("".join(m["content"] for m in messages))
        ids, _ = sft.chat_ids(self.tok, messages, add_generation_prompt=True)
        return ids

    def enders(self, chat: bool) -> frozenset[int]:
        """Tokens that end a reply: <|endoftext|>, and in a chat any token that opens a turn."""
        if not (chat and self.template):
            return frozenset({self.eot})
        return frozenset({self.eot, *(self.tok.token_to_id(t) for t in sft.CHAT_TOKENS)})


def model_name(ckpt: Path) -> str:
    """RUN/checkpoints/step-N is called RUN; any other folder by its own name."""
    return ckpt.parent.parent.name if ckpt.parent.name == "checkpoints" else ckpt.name


def load_params(ckpt: Path, overrides: dict[str, object]) -> SampleConfig:
    """The `sample:` defaults of the run the checkpoint belongs to, flags on top."""
    recipe = recipe_of(ckpt)
    defaults = recipe.sample if recipe is not None else SampleConfig()
    values = {k: v for k, v in overrides.items() if v is not None}
    params = dataclasses.replace(defaults, **values)
    params.check(lambda key: "--" + key.replace("_", "-"))
    return params


@dataclass
class Checked:
    """What a model's files say, checked before its weights are read: a server checks all of
    this, then binds its port, then builds the model."""

    path: str | None  # as the user named it (None: the newest under ./runs)
    ckpt: Path
    command: str
    kind: str
    cfg: ModelConfig
    tok: Any
    defaults: SampleConfig
    device: torch.device
    dtype: str  # the --dtype asked for
    rows: int
    doing: str

    @property
    def name(self) -> str:
        return model_name(self.ckpt)

    @property
    def template(self) -> bool:
        return self.kind == "sft"


def check_model(
    path: str | None,
    command: str,
    overrides: dict[str, object] | None = None,
    dtype: str = "auto",
    rows: int = 1,
    rows_flag: str = "",
    device: str = "auto",
    classifier: bool = False,
    doing: str = "sampling",
) -> Checked:
    """Resolve and validate any model gptcli reads (its metadata, settings and tokenizer) and
    check that rows at a time fit in memory, without reading its weights. A classifier is
    refused unless the command takes one (it predicts labels, not text)."""
    ckpt = load.resolve(path)
    defaults = load_params(ckpt, overrides or {})
    where = pick_device(device)
    pick_dtype(dtype, where)  # a bad --dtype fails before anything loads
    cfg, info = load.metadata(ckpt)
    task = info["task"]
    kind = task.get("kind", "lm")
    if kind == "classify" and not classifier:
        raise UserError(
            f"{command}: {ckpt} is a classifier (finetune task: classify; it predicts labels, "
            "not text): pick a language model with -c, such as the run it was finetuned from"
        )
    if kind == "sft" and task.get("template", sft.CHAT_TEMPLATE) != sft.CHAT_TEMPLATE:
        raise UserError(
            f"{command}: {ckpt} uses the chat template {task['template']!r}; this gptcli "
            f"knows {sft.CHAT_TEMPLATE} (upgrade gptcli)"
        )
    memory.check_inference(cfg, rows, dtype, where, command, rows_flag)
    tok = tokenizer.load(ckpt / tokenizer.TOKENIZER_FILE)
    return Checked(path, ckpt, command, kind, cfg, tok, defaults, where, dtype, rows, doing)


def build(checked: Checked) -> LoadedModel:
    """The checked model's weights, read and built in the dtype picked for its shape."""
    loaded = load.load(checked.ckpt)
    model = build_model(loaded, checked.device).eval()  # first: it names weights that disagree
    dtype = pick_dtype(checked.dtype, checked.device, loaded.config, checked.rows, checked.doing)
    model = model.to(dtype)
    if checked.path is None:
        console.info(
            f"{checked.command}: using {checked.ckpt}, the newest checkpoint under ./runs "
            "(-c picks another)"
        )
    return LoadedModel(
        checked.ckpt, checked.name, checked.kind, model, checked.tok, checked.defaults, loaded
    )


def pick_dtype(
    name: str,
    device: torch.device,
    cfg: ModelConfig | None = None,
    rows: int = 1,
    doing: str = "sampling",
) -> torch.dtype:
    """The weights' dtype for inference: auto as in training (bf16 where native, unless
    decoding rows at a time from a model of cfg's shape measures slower in it)."""
    if name not in ("auto", *DTYPES):
        raise UserError(f"--dtype must be auto, fp32 or bf16, got {name!r}")
    speedup = None if cfg is None else (lambda: bf16_sampling_speedup(cfg, rows))
    return autocast_dtype(device, name, doing, speedup) or torch.float32


def bf16_sampling_speedup(cfg: ModelConfig, rows: int) -> float:
    """fp32 time over bf16 time of a prefill and a few decode steps, rows at a time, of a
    random model of cfg's shape on this CPU (measured once per shape, then cached)."""

    def measure() -> float:
        with torch.random.fork_rng(devices=[]):  # the user's seed stays untouched
            torch.manual_seed(0)
            fp32 = GPT(cfg).eval()
        bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
        n_prompt = max(1, min(16, cfg.block_size // 2))
        steps = min(8, cfg.block_size - n_prompt)
        return faster_ratio(
            lambda: timed_decode(fp32, rows, n_prompt, steps),
            lambda: timed_decode(bf16, rows, n_prompt, steps),
        )

    shape = f"bf16 sample|{rows}|{sorted(dataclasses.asdict(cfg).items())}"
    return cached_probe(CPU_PROBES, shape, measure)


@torch.inference_mode()
def timed_decode(model: GPT, rows: int, n_prompt: int, steps: int) -> None:
    """What decoding costs, without sampling: a prefill of n_prompt tokens, then steps tokens."""
    model.prepack()
    cache = model.new_cache(rows)
    ids = torch.arange(n_prompt).remainder(model.cfg.vocab_size).repeat(rows, 1)
    model(ids, cache=cache, last_only=True)
    token = ids[:, -1:]
    for pos in range(n_prompt, n_prompt + steps):
        model(token, cache=cache, pos=pos, last_only=True)


@torch.inference_mode()
def top1_agreement(
    model: GPT, ids: torch.Tensor, dtype: torch.dtype, min_margin: float = 0.0
) -> float:
    """Share of positions where a dtype copy of model predicts the same next token as model
    (teacher-forced on ids (B, T)): the check that bf16 weights do not change what is sampled.

    min_margin leaves out positions whose two likeliest tokens are closer than that (in
    logits) under model: ties that bf16's 8-bit mantissa cannot resolve either way.
    """
    reference, _ = model(ids)
    other, _ = copy.deepcopy(model).to(dtype).prepack()(ids)  # the kernels sampling uses
    top2 = reference.topk(2, dim=-1).values
    decided = (top2[..., 0] - top2[..., 1]) >= min_margin
    same = reference.argmax(-1) == other.argmax(-1)
    return same[decided].float().mean().item()


def default_slots(device: torch.device) -> int:
    """Rows decoded together when the command does not say: a GPU has room for many; on a CPU
    a decode step's cost grows with the rows past a few."""
    return 32 if device.type == "cuda" else 8


# --------------------------------------------------------------------------- requests and events


class Matcher(Protocol):
    """One row's output constraint (structured output): which tokens may come next. It allows
    an end token only where its output is complete, and never a padding id (past the
    tokenizer's vocabulary), so a constrained row ends in "stop" or is cut ("length")."""

    def apply(self, logits: torch.Tensor) -> torch.Tensor: ...
    def advance(self, token: int) -> None: ...
    def is_done(self) -> bool: ...


@dataclass
class Request:
    """One prompt to continue n times, with its own settings."""

    ids: list[int]
    params: SampleConfig
    seed: int | None = None
    n: int = 1
    enders: frozenset[int] = frozenset()  # tokens that end a row (finish reason "eos")
    logprobs: int | None = None  # alternatives reported per token; None: no log-probabilities
    timeout_s: float | None = None  # then every row ends with what it has ("length")
    slide: bool = True  # past the context keep the newest half and go on; False: end ("length")
    ignore_eos: bool = False  # enders are ordinary tokens (fixed-length benchmarks)
    # structured output: one per row, each allowing only tokens that keep its output valid;
    # enders must hold its end tokens (a constrained row ending on one finishes "stop")
    matchers: list[Matcher] | None = None


@dataclass
class Piece:
    """New text of one row, the tokens it came from, and their log-probabilities."""

    row: int
    text: str
    ids: list[int] = field(default_factory=list)  # the tokens the text came from
    logprobs: list[dict] = field(default_factory=list)


@dataclass
class Finish:
    """A row is done: why (eos, stop or length), what it used, and when."""

    row: int
    reason: str
    tokens: int  # generated, the ender not counted
    prompt_tokens: int  # what the model read (a long prompt's last block_size tokens)
    queued_s: float  # waiting for a slot
    first_token_s: float | None  # from submission to the first token
    elapsed_s: float  # from submission to the end


@dataclass
class Started:
    """A request has its rows and begins (its prompt is being read): a server's metrics count
    it as running from here. Only a sink sees it; iterating a handle skips it."""

    rows: int
    prompt_tokens: int


Event = Piece | Finish


class Handle:
    """A submitted request: iterate its events in order (or give the engine a sink); closing
    the iteration early, or cancel(), frees its rows at the next step."""

    def __init__(
        self,
        request: Request,
        sink: Callable[[Event | Exception], None] | None,
        pump: Callable[[], bool] | None = None,
    ):
        self.request = request
        self.pump = pump  # runs one engine step on the reader's thread (no worker thread)
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.sink = sink or self.events.put
        self.cancelled = threading.Event()
        self.submitted = time.perf_counter()
        self.admitted: float | None = None
        self.deadline: float | None = None  # the time limit counts from admission
        self.open_rows = request.n

    def cancel(self) -> None:
        self.cancelled.set()

    def __iter__(self) -> Iterator[Event]:
        finished = 0
        try:
            while finished < self.request.n:
                event = self.next_event()
                if event is None:
                    continue
                if isinstance(event, Exception):
                    raise event
                if isinstance(event, Started):
                    continue
                finished += isinstance(event, Finish)
                yield event
        finally:
            if finished < self.request.n:
                self.cancel()

    def next_event(self) -> Event | Started | Exception | None:
        """The next event, running engine steps until there is one when the reader drives the
        engine; None after a quarter second without one, which keeps signals (Ctrl-C, SIGTERM)
        deliverable while waiting."""
        if self.pump is not None:
            while self.events.empty() and self.pump():
                pass
        try:
            return self.events.get(timeout=0.25)
        except queue.Empty:
            return None


@dataclass(eq=False)
class Row:
    """One sequence in the batch: its slot in the cache and where it stands."""

    handle: Handle
    index: int  # which of the request's n rows
    slot: int
    gen: torch.Generator
    stream: TextStream
    window: list[int]  # the tokens in (or bound for) the cache, for the window slide
    pending: list[int] = field(default_factory=list)  # tokens still to prefill
    pos: int = 0  # tokens in the cache
    logits: torch.Tensor | None = None  # the next token's logits, once known
    token: int | None = None  # sampled, to be fed at the next decode step
    seen: torch.Tensor | None = None  # tokens already in the text (repetition penalty)
    followers: list[Row] = field(default_factory=list)  # rows sharing this row's prefill
    count: int = 0
    unsent: list[int] = field(default_factory=list)  # tokens whose text is not yet sent
    logprobs: list[dict] = field(default_factory=list)  # not yet sent with a piece
    first_token: float | None = None

    @property
    def request(self) -> Request:
        return self.handle.request

    @property
    def matcher(self) -> Matcher | None:
        matchers = self.handle.request.matchers
        return None if matchers is None else matchers[self.index]


def row_seed(seed: int | None, index: int) -> int:
    if seed is None:
        return random.SystemRandom().getrandbits(63)
    return (seed + index * GOLDEN) % 2**63


# --------------------------------------------------------------------------- the engine


class Engine:
    """The model, its KV cache of `slots` rows, and the rows running in it."""

    def __init__(self, model: GPT, tok, slots: int, worker: bool = False) -> None:
        if slots < 1:
            raise UserError(f"--parallel must be >= 1, got {slots}")
        with torch.inference_mode():
            self.model = model.eval().prepack()  # CPU: oneDNN-layout weights for few rows
        self.tok = tok
        self.slots = slots
        self.block = model.cfg.block_size
        self.device = model.wte.weight.device
        self.cache = None  # allocated on first use
        self.rows: list[Row | None] = [None] * slots
        self.waiting: deque[Handle] = deque()
        self.wake = threading.Condition()
        self.worker = worker  # a thread of its own runs the model; else the readers do (pump)
        self.thread: threading.Thread | None = None
        self.stepping = threading.Lock()  # one reader steps at a time
        self.closed = False
        self.decode_s: float | None = None  # recent decode step time
        self.prefill_token_s: float | None = None  # recent prefill time per token

    # ----------------------------------------------------------------- callers' side

    def submit(self, request: Request, sink=None) -> Handle:
        """Queue a request; its events go to sink (any thread may call it) or to the handle."""
        if not request.ids:
            raise ValueError("a request needs at least one prompt token")
        if not 1 <= request.n <= self.slots:
            raise ValueError(f"n={request.n} needs more rows than the {self.slots} slots")
        if request.matchers is not None and len(request.matchers) != request.n:
            raise ValueError(f"{len(request.matchers)} matchers for n={request.n} rows")
        if sink is not None and not self.worker:
            raise ValueError("a sink is fed by the engine's worker: make it with worker=True")
        handle = Handle(request, sink, None if self.worker else self.pump)
        with self.wake:
            if self.closed:
                raise RuntimeError("the engine is closed")
            self.waiting.append(handle)
            if self.worker and self.thread is None:
                self.thread = threading.Thread(target=self.work, name="gptcli-engine", daemon=True)
                self.thread.start()
            self.wake.notify()
        return handle

    def generate(self, request: Request) -> Iterator[Event]:
        return iter(self.submit(request))

    def stats(self) -> dict[str, int]:
        """Rows running and waiting, and slots: what a server's metrics report."""
        with self.wake:
            waiting = sum(h.request.n for h in self.waiting)
        running = sum(r is not None for r in self.rows)
        return {"slots": self.slots, "running": running, "waiting": waiting}

    def close(self) -> None:
        """Stop the worker; requests still waiting or running get an error event."""
        with self.wake:
            self.closed = True
            self.wake.notify()
        if self.thread is not None:
            self.thread.join(timeout=10)  # the worker tells what was left when it stops
        else:
            self.fail_all(RuntimeError("the engine was closed"))

    def pump(self) -> bool:
        """One step on the reader's thread (an engine without a worker); False when no row is
        running or waiting, so there is nothing to step. Readers on several threads take turns."""
        with self.stepping:
            with self.wake:
                if self.closed:
                    raise RuntimeError("the engine is closed")
                self.admit()
                if not any(self.rows):
                    return False
            with torch.inference_mode():
                self.step_or_fail()
        return True

    # ----------------------------------------------------------------- the worker

    def work(self) -> None:
        with torch.inference_mode():
            while True:
                with self.wake:
                    while not self.closed and not self.waiting and not any(self.rows):
                        self.wake.wait()
                    if self.closed:
                        break
                    self.admit()
                self.step_or_fail()
        self.fail_all(RuntimeError("the engine was closed"))

    def step_or_fail(self) -> None:
        try:
            self.step()
        except Exception as e:  # noqa: BLE001 - each caller is told; the engine goes on
            self.fail_all(e)

    def fail_all(self, error: Exception) -> None:
        for handle in {row.handle for row in self.active()}:
            handle.sink(error)
        self.rows = [None] * self.slots
        with self.wake:
            while self.waiting:
                self.waiting.popleft().sink(error)

    def admit(self) -> None:
        """Move waiting requests, oldest first, into free slots (called with the lock held)."""
        while self.waiting:
            handle = self.waiting[0]
            if handle.cancelled.is_set():
                self.waiting.popleft()
                continue
            free = [s for s, row in enumerate(self.rows) if row is None]
            if len(free) < handle.request.n:
                return
            self.waiting.popleft()
            self.start(handle, free[: handle.request.n])

    def start(self, handle: Handle, slots: list[int]) -> None:
        request = handle.request
        handle.admitted = time.perf_counter()
        if request.timeout_s is not None:
            handle.deadline = handle.admitted + request.timeout_s
        ids = request.ids[-self.block :]
        handle.sink(Started(request.n, len(ids)))
        vocab = self.model.cfg.vocab_size
        rows = []
        for index, slot in enumerate(slots):
            gen = torch.Generator(device=self.device)
            gen.manual_seed(row_seed(request.seed, index))
            stream = TextStream(self.tok, ids, request.params.stop)
            row = Row(handle, index, slot, gen, stream, list(ids))
            if request.params.repetition_penalty != 1.0:
                row.seen = torch.zeros(vocab, dtype=torch.bool, device=self.device)
                row.seen[torch.tensor(ids, device=self.device)] = True
            self.rows[slot] = row
            rows.append(row)
        rows[0].pending = list(ids)  # the others copy its cache once it is prefilled
        rows[0].followers = rows[1:]

    def step(self) -> None:
        """Drop what was cancelled or ran out of time, sample every row whose logits are known,
        prefill one chunk, and advance every decoding row by one token."""
        if self.cache is None:
            self.cache = self.model.new_cache(self.slots)
        now = time.perf_counter()
        for row in self.active():
            if row.handle.cancelled.is_set():
                self.free(row)
            elif row.handle.deadline is not None and now > row.handle.deadline:
                self.finish(row, "length")
        ready = [row for row in self.active() if row.logits is not None]
        if ready:
            self.sample(ready)
        decoding = [row for row in self.active() if row.token is not None]
        prefilling = [row for row in self.active() if row.pending]
        if prefilling:
            self.prefill(prefilling, self.chunk_size() if decoding else self.block)
        if decoding:
            self.decode(decoding)

    def active(self) -> list[Row]:
        return [row for row in self.rows if row is not None]

    def chunk_size(self) -> int:
        """Prefill tokens that take about one decode step (while other rows wait on it)."""
        if self.decode_s is None or self.prefill_token_s is None:
            return 32
        return max(16, min(self.block, int(self.decode_s / self.prefill_token_s)))

    def timed(self, started: float) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - started

    def prefill(self, prefilling: list[Row], budget: int) -> None:
        """One chunk of the oldest request's prompt, with chunks of later requests at the same
        position in the same forward (right-padded to the longest) while the padded batch stays
        within budget tokens (a decode step's time; a context's worth when no row decodes). A
        padded position is rewritten before its row ever reads it."""
        queue = sorted(prefilling, key=lambda r: r.handle.admitted)
        first = queue[0]
        rows, width = [first], min(len(first.pending), budget)
        for row in queue[1:]:
            wider = max(width, min(len(row.pending), budget))
            if row.pos == first.pos and (len(rows) + 1) * wider <= budget:
                rows.append(row)
                width = wider
        rows.sort(key=lambda r: r.slot)
        chunks = [row.pending[:width] for row in rows]
        started = time.perf_counter()
        padded = max(len(c) for c in chunks)
        x = torch.tensor([c + [0] * (padded - len(c)) for c in chunks], device=self.device)
        slots = [row.slot for row in rows]
        if slots == list(range(slots[0], slots[0] + len(slots))):
            # side by side (always so for one row): a view, where `pick` would copy the rows'
            # prefixes out at every layer of a long prompt's later chunks
            view = self.cache.rows(slots[0], slots[-1] + 1)
        else:
            view = self.cache.pick(slots)
        hidden = self.model.hidden(x, cache=view, pos=first.pos)
        last = torch.tensor([len(c) - 1 for c in chunks], device=self.device)
        logits = self.model.lm_head(hidden[torch.arange(len(rows), device=self.device), last])
        if padded >= 8:
            self.prefill_token_s = ema(self.prefill_token_s, self.timed(started) / x.numel())
        for row, chunk, row_logits in zip(rows, chunks, logits, strict=True):
            row.pending = row.pending[len(chunk) :]
            row.pos += len(chunk)
            if not row.pending:
                self.prefilled(row, row_logits)

    def prefilled(self, row: Row, logits: torch.Tensor) -> None:
        row.logits = logits
        for other in row.followers:  # the request's other rows start from the same prompt
            self.cache.k[:, other.slot, :, : row.pos] = self.cache.k[:, row.slot, :, : row.pos]
            self.cache.v[:, other.slot, :, : row.pos] = self.cache.v[:, row.slot, :, : row.pos]
            other.pos, other.logits = row.pos, row.logits
        row.followers = []

    def decode(self, rows: list[Row]) -> None:
        """One token for every decoding row, each at its own position. Slots between them
        that are not decoding get a dummy token at a position that is rewritten before it is
        ever read (their next prefilled or decoded position)."""
        started = time.perf_counter()
        hi = max(row.slot for row in rows) + 1
        tokens, positions = [0] * hi, [0] * hi
        for slot in range(hi):
            row = self.rows[slot]
            if row is not None:
                positions[slot] = min(row.pos, self.block - 1)
                tokens[slot] = row.token if row.token is not None else 0
        x = torch.tensor(tokens, device=self.device)[:, None]
        at = positions[rows[0].slot]
        if all(positions[row.slot] == at for row in rows) and max(positions) == at:
            # every decoding row is at one position (--num-samples, a lone request) and no
            # other slot has written past it (the dummy is rewritten before it is read): one
            # position for all skips the per-row mask and scatter, a quarter of the step
            pos, view = at, self.cache.rows(0, hi)
        else:
            pos = torch.tensor(positions, device=self.device)
            view = self.cache.rows(0, hi, max(positions) + 1)
        logits, _ = self.model(x, cache=view, pos=pos, last_only=True)
        for row in rows:
            row.logits, row.token = logits[row.slot, -1], None
            row.pos += 1
        self.decode_s = ema(self.decode_s, self.timed(started))

    def sample(self, rows: list[Row]) -> None:
        """Each row's next token with its own settings and generator; the rows of a request
        share its settings, so their controls run as one batch."""
        logits = torch.stack([row.logits for row in rows]).float()
        scores = None
        if any(row.request.logprobs is not None for row in rows):
            scores = torch.log_softmax(logits, dim=-1)
        groups: dict[int, list[int]] = {}  # rows by their request's settings
        for i, row in enumerate(rows):
            row.logits = None
            if self.rows[row.slot] is not row:  # its request failed on an earlier row
                continue
            request = row.request
            if row.seen is not None and (row.matcher is not None or not request.ignore_eos):
                row.seen[list(request.enders)] = False  # a penalised row can still end
            if row.matcher is not None:  # the constraint first: every control acts within it
                try:
                    logits[i] = row.matcher.apply(logits[i])
                except Exception as e:  # noqa: BLE001 - a failed constraint ends its request
                    self.fail(row.handle, e)
                    continue
            groups.setdefault(id(request.params), []).append(i)
        for members in groups.values():
            first = rows[members[0]]
            seen = None if first.seen is None else torch.stack([rows[i].seen for i in members])
            gens = [rows[i].gen for i in members]
            tokens = next_tokens(logits[members], first.request.params, gens, seen)
            for i, token in zip(members, tokens, strict=True):
                row = rows[i]
                if self.rows[row.slot] is not row:  # its request failed on an earlier row
                    continue
                try:
                    self.take(row, token, None if scores is None else scores[i])
                except Exception as e:
                    if row.matcher is None:
                        raise
                    self.fail(row.handle, e)  # a failed constraint ends its own request only

    def take(self, row: Row, token: int, scores: torch.Tensor | None) -> None:
        """Hand a sampled token to the row's caller and decide what the row does next."""
        request = row.request
        matcher = row.matcher
        if row.first_token is None:
            row.first_token = time.perf_counter()
        if token in request.enders and (matcher is not None or not request.ignore_eos):
            # a matcher allows an end token only where its output is complete: a "stop"
            self.finish(row, "eos" if matcher is None else "stop")
            return
        row.count += 1
        if row.seen is not None:
            row.seen[token] = True
        if matcher is not None:
            matcher.advance(token)
        if scores is not None:
            row.logprobs.append(token_logprob(self.tok, token, scores, request.logprobs or 0))
        row.unsent.append(token)
        text = row.stream.push(token)
        if text:
            self.send(row, text)
        if row.stream.stopped or (matcher is not None and matcher.is_done()):
            self.finish(row, "stop")
            return
        if row.count >= request.params.max_new_tokens:
            self.finish(row, "length")
            return
        row.window.append(token)
        if row.pos < self.block:
            row.token = token
        elif not request.slide:
            self.finish(row, "length")
        else:  # the context is full: keep its newest half (this token included), prefill again
            row.window = row.window[-(self.block // 2) :]
            row.pending, row.pos = list(row.window), 0

    def send(self, row: Row, text: str) -> None:
        row.handle.sink(Piece(row.index, text, row.unsent, row.logprobs))
        row.logprobs, row.unsent = [], []

    def finish(self, row: Row, reason: str) -> None:
        tail = row.stream.finish()
        if tail or row.unsent or row.logprobs:
            self.send(row, tail)
        handle = row.handle
        now = time.perf_counter()
        first = None if row.first_token is None else row.first_token - handle.submitted
        queued = (handle.admitted or now) - handle.submitted
        reason = "stop" if row.stream.stopped else reason
        prompt = min(len(handle.request.ids), self.block)
        handle.sink(
            Finish(row.index, reason, row.count, prompt, queued, first, now - handle.submitted)
        )
        self.free(row)

    def fail(self, handle: Handle, error: Exception) -> None:
        """One request's error (its constraint failed): its caller gets it, its rows end."""
        handle.sink(error)
        for row in self.active():
            if row.handle is handle:
                self.free(row)

    def free(self, row: Row) -> None:
        """A row's slot is free from the next step (its request's other rows end with it when
        it is cancelled or runs out of time, so none waits on its prefill)."""
        self.rows[row.slot] = None


def ema(old: float | None, new: float, weight: float = 0.2) -> float:
    return new if old is None else (1 - weight) * old + weight * new
