"""`gptcli serve`: OpenAI's HTTP API (models, completions, chat completions) over one checkpoint,
and what servers offer beside it: /health, /metrics (Prometheus), /tokenize and /detokenize.

The checkpoint's metadata is checked first, then the port is bound and the weights load on a
thread (/health answers 503 until they have). Every request runs on the one inference engine,
side by side with the others (continuous batching: a request joins the running batch at the
next decode step and leaves it when done or when its client goes away); the event loop only
parses, admits (429 beyond the engine's rows plus --max-queue) and formats. Every input is
checked by hand into OpenAI-style errors: bad input is never a 500. At shutdown the requests
in flight get the drain time; any still running then is answered with an error object.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import math
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import dataclass

from gptcli import console, constrain, tokenizer
from gptcli.chat import reply_reason
from gptcli.console import UserError
from gptcli.constrain import Compilers, Constraint
from gptcli.engine import Checked, Engine, Event, Finish, LoadedModel, Piece, Started, build
from gptcli.engine import Request as EngineRequest
from gptcli.recipe import SampleConfig

try:
    import prometheus_client
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException
except ImportError as e:  # the optional extra
    raise UserError(
        "gptcli serve needs FastAPI, uvicorn and prometheus-client: pip install 'gptcli[serve]'"
    ) from e

MAX_BODY = 1 << 20  # bytes: far more than any prompt that fits a context
MAX_N = 16  # choices per request (each one is a row of the batch)
DISCONNECT_CHECK_S = 0.05  # how often a waiting non-streaming request checks its client
MAX_STOP = 16
MAX_PROMPTS = 16
DRAIN_S = 30.0  # in-flight requests get this long after SIGTERM/SIGINT, then they are cut off
CUT_GRACE_S = 5.0  # uvicorn's own limit comes this much later, so the cut-off answers go out
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
# the API's names for the sampling settings
API_NAMES = {"max_new_tokens": "max_tokens"}
PROMPT_FORMS = "a string, a list of strings, a non-empty list of token ids, or a list of those"


class ApiError(Exception):
    """A request the server refuses, as OpenAI's error object with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code=None) -> None:
        super().__init__(message)
        self.status, self.param, self.code = status, param, code

    def body(self) -> dict:
        kind = {401: "authentication_error", 429: "rate_limit_error"}.get(
            self.status, "invalid_request_error" if self.status < 500 else "server_error"
        )
        error = {"message": str(self), "type": kind, "param": self.param, "code": self.code}
        return {"error": error}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


@dataclass
class Options:
    """The server's own settings (its flags)."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_queue: int = 16
    max_tokens: int | None = None  # the most a request may ask for; None: the context size
    request_timeout: float | None = None  # seconds of generation per request; None: no limit
    drain_timeout: float = DRAIN_S
    parallel: int = 8  # rows the engine decodes together

    def check(self, block_size: int) -> Options:
        """These settings checked (one line on what is wrong) and the defaults filled in."""
        if self.parallel < 1:
            raise UserError(f"--parallel must be >= 1, got {self.parallel}")
        if self.max_queue < 0:
            raise UserError(f"--max-queue must be >= 0, got {self.max_queue}")
        if self.api_key is not None and not self.api_key:
            raise UserError("--api-key must not be empty")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise UserError(f"--max-tokens must be a positive integer, got {self.max_tokens}")
        for flag, value in (
            ("--request-timeout", self.request_timeout),
            ("--drain-timeout", self.drain_timeout),
        ):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise UserError(f"{flag} must be a positive number of seconds, got {value:g}")
        return dataclasses.replace(self, max_tokens=self.max_tokens or block_size)


# --------------------------------------------------------------------------- metrics

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """The server's Prometheus metrics (GET /metrics), in a registry of its own so that two
    servers in one process never share counters. Generation reports through a Tracker per
    request; prometheus_client is thread-safe, so the generating thread may call it."""

    def __init__(self, slots: int) -> None:
        r = self.registry = prometheus_client.CollectorRegistry()
        metric = prometheus_client
        self.running = metric.Gauge(
            "gptcli_requests_running", "Requests generating now.", registry=r
        )
        self.waiting = metric.Gauge(
            "gptcli_requests_waiting", "Requests admitted and waiting for a slot.", registry=r
        )
        self.prompt_tokens = metric.Counter(
            "gptcli_prompt_tokens", "Prompt tokens read (prefilled).", registry=r
        )
        self.generation_tokens = metric.Counter(
            "gptcli_generation_tokens", "Tokens generated.", registry=r
        )
        self.finished = metric.Counter(
            "gptcli_requests_finished",
            "Requests ended, by how: stop, length or cancelled (client gone, shutdown, error).",
            ["reason"],
            registry=r,
        )
        self.ttft = metric.Histogram(
            "gptcli_time_to_first_token_seconds",
            "From a request's arrival to its first generated token.",
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.per_token = metric.Histogram(
            "gptcli_time_per_output_token_seconds",
            "Between two consecutive tokens of one reply.",
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.slots_used = metric.Gauge("gptcli_slots_used", "Slots generating now.", registry=r)
        self.slots_total = metric.Gauge("gptcli_slots_total", "Slots the server has.", registry=r)
        self.slots_total.set(slots)

    def request(self, timeout: float | None = None) -> Tracker:
        """A tracker for a request just admitted (it waits until Tracker.start)."""
        return Tracker(self, timeout)

    def exposition(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)


class Tracker:
    """One request's progress: reported to the metrics as it happens (start, each token,
    finish) and summed up as the response's `timings`. Its deadline is start + timeout."""

    def __init__(self, metrics: Metrics, timeout: float | None) -> None:
        self.metrics, self.timeout = metrics, timeout
        self.arrived = time.monotonic()
        self.started: float | None = None
        self.first: float | None = None
        self.latest: float | None = None
        self.last: dict[int, float] = {}  # each row's latest token time
        self.rows = self.prompt_n = self.predicted_n = 0
        self.deadline: float | None = None
        self.done = False
        metrics.waiting.inc()

    def start(self, prompt_tokens: int, rows: int = 1) -> None:
        """Generation begins: prompt_tokens are read, rows slots are taken."""
        self.started = time.monotonic()
        if self.timeout is not None:
            self.deadline = self.started + self.timeout
        self.rows, self.prompt_n = rows, prompt_tokens
        m = self.metrics
        m.waiting.dec()
        m.running.inc()
        m.slots_used.inc(rows)
        m.prompt_tokens.inc(prompt_tokens)

    def token(self, row: int = 0) -> None:
        """One token generated on row (a choice of this request)."""
        now = time.monotonic()
        m = self.metrics
        if self.first is None:
            self.first = now
            m.ttft.observe(now - self.arrived)
        elif row in self.last:
            m.per_token.observe(now - self.last[row])
        self.last[row] = self.latest = now
        self.predicted_n += 1
        m.generation_tokens.inc()

    def finish(self, reason: str) -> None:
        """The request ended (stop, length or cancelled); later calls do nothing."""
        if self.done:
            return
        self.done = True
        m = self.metrics
        if self.started is None:
            m.waiting.dec()
        else:
            m.running.dec()
            m.slots_used.dec(self.rows)
        m.finished.labels(reason).inc()

    def timings(self) -> dict:
        """llama.cpp's `timings` object: prompt_ms from the start of generation to the first
        token, predicted_ms from the first token to the last, and their rates."""
        start = self.started if self.started is not None else time.monotonic()
        first = self.first if self.first is not None else start
        prompt_ms = (first - start) * 1000
        predicted_ms = ((self.latest or first) - first) * 1000

        def rate(n: int, ms: float) -> float | None:
            return n * 1000 / ms if ms > 0 else None

        return {
            "queued_ms": (start - self.arrived) * 1000,
            "prompt_n": self.prompt_n,
            "prompt_ms": prompt_ms,
            "prompt_per_second": rate(self.prompt_n, prompt_ms),
            "predicted_n": self.predicted_n,
            "predicted_ms": predicted_ms,
            "predicted_per_token_ms": predicted_ms / self.predicted_n if self.predicted_n else None,
            "predicted_per_second": rate(self.predicted_n, predicted_ms),
        }


# --------------------------------------------------------------------------- request checking


def field(body: dict, key: str, kind: str, default=None):
    """body[key] when it has the JSON type kind (int, number, bool, string, object), else 400."""
    value = body.get(key)
    if value is None:
        return default
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "string": isinstance(value, str),
        "object": isinstance(value, dict),
    }[kind]
    if not ok:
        shown = json.dumps(value)[:40]
        raise ApiError(
            400, f"'{key}' must be {'an' if kind == 'int' else 'a'} {kind}, got {shown}", key
        )
    if kind == "number" and not math.isfinite(value):
        raise ApiError(400, f"'{key}' must be a finite number", key)
    return value


def string_list(body: dict, key: str, limit: int) -> list[str] | None:
    """A string or a list of strings (at most limit), as `prompt` and `stop` take."""
    value = body.get(key)
    if value is None:
        return None
    values = [value] if isinstance(value, str) else value
    if not (isinstance(values, list) and values and all(isinstance(v, str) for v in values)):
        raise ApiError(400, f"'{key}' must be a string or a non-empty list of strings", key)
    if len(values) > limit:
        raise ApiError(400, f"'{key}' takes at most {limit} strings, got {len(values)}", key)
    return values


def sampling(
    body: dict, defaults: SampleConfig, chat: bool, limit: int
) -> tuple[SampleConfig, int, int | None]:
    """The request's settings on top of the run's `sample:` defaults; n; seed. max_tokens
    (chat: also max_completion_tokens) may not pass the server's limit."""
    key, max_tokens = "max_tokens", field(body, "max_tokens", "int")
    if chat and body.get("max_completion_tokens") is not None:
        key, max_tokens = "max_completion_tokens", field(body, "max_completion_tokens", "int")
    if max_tokens is not None and max_tokens > limit:
        raise ApiError(
            400,
            f"'{key}' is {max_tokens}, over this server's limit of {limit} tokens "
            "(gptcli serve --max-tokens)",
            key,
        )
    values = {
        "max_new_tokens": min(defaults.max_new_tokens, limit) if max_tokens is None else max_tokens,
        "temperature": field(body, "temperature", "number"),
        "top_p": field(body, "top_p", "number"),
        "top_k": field(body, "top_k", "int"),
        "min_p": field(body, "min_p", "number"),
        "repetition_penalty": field(body, "repetition_penalty", "number"),
        "stop": string_list(body, "stop", MAX_STOP),
    }
    params = dataclasses.replace(defaults, **{k: v for k, v in values.items() if v is not None})
    try:
        params.check(lambda key: API_NAMES.get(key, key))
    except UserError as e:
        raise ApiError(400, str(e)) from None
    n = field(body, "n", "int", 1)
    if not 1 <= n <= MAX_N:
        raise ApiError(400, f"'n' must be between 1 and {MAX_N}, got {n}", "n")
    seed = field(body, "seed", "int")
    if seed is not None and not 0 <= seed < 2**63:
        raise ApiError(400, f"'seed' must be between 0 and 2**63 - 1, got {seed}", "seed")
    return params, n, seed


def is_ids(value: object) -> bool:
    """A non-empty JSON list of integers: token ids, as OpenAI's `prompt` may be."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(i, int) and not isinstance(i, bool) for i in value)
    )


def check_ids(ids: list[int], vocab: int, key: str) -> list[int]:
    """ids, each inside the model's vocabulary, else 400."""
    bad = next((i for i in ids if not 0 <= i < vocab), None)
    if bad is not None:
        raise ApiError(
            400, f"'{key}' has the token id {bad}, outside this model's 0..{vocab - 1}", key
        )
    return list(ids)


def prompt_ids(lm: LoadedModel, body: dict) -> list[list[int]]:
    """`prompt` as token ids: texts read as `gptcli sample` reads them (a new document after
    <|endoftext|>), token ids as they are."""
    value = body.get("prompt")
    if value is None:
        raise ApiError(400, "'prompt' is required", "prompt")
    prompts = [value] if isinstance(value, str) or is_ids(value) else value
    ok = (
        isinstance(prompts, list)
        and bool(prompts)
        and (all(isinstance(v, str) for v in prompts) or all(is_ids(v) for v in prompts))
    )
    if not ok:
        raise ApiError(400, f"'prompt' must be {PROMPT_FORMS}", "prompt")
    if len(prompts) > MAX_PROMPTS:
        raise ApiError(
            400, f"'prompt' takes at most {MAX_PROMPTS} prompts, got {len(prompts)}", "prompt"
        )
    if isinstance(prompts[0], str):
        return [lm.text_ids(text) for text in prompts]
    return [check_ids(ids, vocab_size(lm), "prompt") for ids in prompts]


def vocab_size(lm: LoadedModel) -> int:
    return lm.model.cfg.vocab_size


def check_model(body: dict, name: str, required: bool = True) -> None:
    """The request's `model` names the one this server serves (optional where not required)."""
    model = field(body, "model", "string")
    if model is None:
        if required:
            raise ApiError(400, "'model' is required: GET /v1/models lists it", "model")
        return
    if model != name:
        raise ApiError(
            404,
            f"the model '{model}' does not exist; this server serves '{name}'",
            "model",
            "model_not_found",
        )


def chat_messages(body: dict) -> list[dict]:
    """OpenAI messages as the template's: text content (or text parts); developer = system."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content}", "messages")
    result = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message.get("role") if isinstance(message, dict) else None
        role = "system" if role == "developer" else role
        if role not in ("system", "user", "assistant"):
            raise ApiError(400, f"{where}: 'role' must be system, user or assistant", "messages")
        content = message.get("content")
        if isinstance(content, list) and all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
            for p in content
        ):
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"{where}: 'content' must be text", "messages")
        result.append({"role": role, "content": content})
    return result


@dataclass
class Job:
    """One request's work: prompts (n replies each), settings, and what to report."""

    prompts: list[list[int]]
    params: SampleConfig
    n: int
    seed: int | None
    chat: bool
    stream: bool
    logprobs: int | None  # top alternatives per token (completions), None = no logprobs
    usage_chunk: bool  # stream_options.include_usage
    ignore_eos: bool = False  # end tokens are text like any other: fixed-length replies
    constraint: Constraint | None = None  # structured output: every choice parses


def parse_job(lm: LoadedModel, body: dict, chat: bool, limit: int) -> Job:
    """A completions (chat: chat completions) request body, checked; limit: --max-tokens."""
    check_model(body, lm.name)
    params, n, seed = sampling(body, lm.defaults, chat, limit)
    stream = field(body, "stream", "bool", False)
    options = field(body, "stream_options", "object", {})
    usage_chunk = field(options, "include_usage", "bool", False)
    ignore_eos = field(body, "ignore_eos", "bool", False)
    try:  # response_format / structured_outputs: a bad schema or regex is the caller's 400
        constraint = constrain.from_request(body)
        constrain.check_stop(constraint, body.get("stop"), "stop")
    except UserError as e:
        param = "structured_outputs" if "structured_outputs" in body else "response_format"
        raise ApiError(400, str(e), "stop" if body.get("stop") else param) from None
    params = constrain.without_stops(params, constraint)
    logprobs = None
    if chat:
        prompts = [lm.chat_ids(chat_messages(body))]
    else:
        prompts = prompt_ids(lm, body)
        logprobs = field(body, "logprobs", "int")
        if logprobs is not None and not 0 <= logprobs <= 5:
            raise ApiError(400, f"'logprobs' must be between 0 and 5, got {logprobs}", "logprobs")
        if field(body, "echo", "bool", False):
            raise ApiError(400, "'echo' is not supported", "echo")
    return Job(
        prompts, params, n, seed, chat, stream, logprobs, usage_chunk, ignore_eos, constraint
    )


def tokenized(lm: LoadedModel, body: dict) -> dict:
    """POST /tokenize, in vLLM's form: the ids of `prompt` as completions read it (with
    add_special_tokens false: the text's own ids, no <|endoftext|> first), or of `messages` as
    chat completions read them."""
    check_model(body, lm.name, required=False)
    if body.get("messages") is not None:
        ids = lm.chat_ids(chat_messages(body))
    else:
        prompt = field(body, "prompt", "string")
        if prompt is None:
            raise ApiError(400, "'prompt' (a string) or 'messages' is required", "prompt")
        if field(body, "add_special_tokens", "bool", True):
            ids = lm.text_ids(prompt)
        else:
            ids = tokenizer.encode_batch(lm.tok, [prompt])[0]
    answer = {"count": len(ids), "max_model_len": lm.block, "tokens": ids}
    if field(body, "return_token_strs", "bool", False):
        answer["token_strs"] = [lm.tok.id_to_token(i) for i in ids]
    return answer


def detokenized(lm: LoadedModel, body: dict) -> dict:
    """POST /detokenize, in vLLM's form: {"tokens": [ids]} -> {"prompt": text}."""
    check_model(body, lm.name, required=False)
    ids = body.get("tokens")
    if not (ids == [] or is_ids(ids)):
        raise ApiError(400, "'tokens' must be a list of token ids", "tokens")
    return {"prompt": tokenizer.decode(lm.tok, check_ids(ids, vocab_size(lm), "tokens"))}


# --------------------------------------------------------------------------- generation


class Batcher:
    """Admits requests (at most the engine's rows plus max_queue at once; more get 429) and
    runs them side by side on the one engine, their events delivered on the event loop."""

    def __init__(self, lm: LoadedModel, engine: Engine, max_queue: int, timeout: float | None):
        self.lm, self.engine, self.timeout = lm, engine, timeout
        self.limit = engine.slots + max_queue
        self.admitted = 0
        self.compilers = Compilers(lm.tok, lm.model.cfg.vocab_size)  # built on first use

    def admit(self) -> None:
        if self.admitted >= self.limit:
            raise ApiError(
                429,
                f"the server is busy ({self.admitted} requests in flight); retry shortly",
                code="queue_full",
            )
        self.admitted += 1

    def release(self) -> None:
        self.admitted -= 1

    def request(self, job: Job, ids: list[int]) -> EngineRequest:
        chat = job.chat and self.lm.template
        matchers = None
        if job.constraint is not None:
            matchers = self.compilers.matchers(job.constraint, job.n, chat)
        return EngineRequest(
            ids, job.params, job.seed, job.n, self.lm.enders(job.chat), job.logprobs, self.timeout,
            ignore_eos=job.ignore_eos, matchers=matchers,
        )  # fmt: skip

    async def events(
        self, job: Job, tracker: Tracker, client: Request | None = None
    ) -> AsyncIterator[tuple[int, Event]]:
        """Every choice's events, tagged with its index, as the engine produces them; the
        tracker hears of the start, of each token and of the end. A client that goes away
        (checked between events) cancels every row of its request."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        handles = []
        for p, ids in enumerate(job.prompts):

            def sink(event, p=p) -> None:
                hand_over(loop, events, (p, event))

            handles.append(self.engine.submit(self.request(job, ids), sink))
        remaining, started, reasons = len(job.prompts) * job.n, 0, []
        checked = time.monotonic()
        try:
            while remaining:
                try:
                    p, event = await asyncio.wait_for(events.get(), DISCONNECT_CHECK_S)
                except TimeoutError:
                    p, event = None, None
                if client is not None and time.monotonic() - checked >= DISCONNECT_CHECK_S:
                    checked = time.monotonic()
                    if await client.is_disconnected():
                        return
                if event is None:
                    continue
                if isinstance(event, Exception):
                    raise event
                if isinstance(event, Started):
                    started += event.prompt_tokens
                    if p == len(job.prompts) - 1:  # every prompt of the request has its rows
                        tracker.start(started, len(job.prompts) * job.n)
                    continue
                index = p * job.n + event.row
                if isinstance(event, Piece):
                    for _ in event.ids:
                        tracker.token(index)
                else:
                    remaining -= 1
                    reasons.append(reply_reason(event.reason))
                yield index, event
            tracker.finish("length" if "length" in reasons else "stop")
        finally:
            tracker.finish("cancelled")  # nothing when the reply has finished
            for handle in handles:
                handle.cancel()


def usage(prompt_tokens: list[int], completion: int) -> dict:
    used = sum(prompt_tokens)
    return {
        "prompt_tokens": used,
        "completion_tokens": completion,
        "total_tokens": used + completion,
    }


def completion_logprobs(entries: list[dict], offset: int) -> dict:
    """OpenAI's legacy logprobs object for the tokens of one completion (or chunk)."""
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry["token"])
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [e.get("top", {}) for e in entries],
        "text_offset": offsets,
    }


async def whole_reply(
    batcher: Batcher, job: Job, tracker: Tracker, client: Request
) -> tuple[list[dict], dict] | None:
    """A non-streaming request's choices and usage (None: the client went away)."""
    size = len(job.prompts) * job.n
    texts, entries = [""] * size, [[] for _ in range(size)]
    reasons, counts = ["length"] * size, [0] * size
    prompt_tokens = [0] * len(job.prompts)
    finished = 0
    async for index, event in batcher.events(job, tracker, client):
        if isinstance(event, Piece):
            texts[index] += event.text
            entries[index] += event.logprobs
        else:
            reasons[index], counts[index] = reply_reason(event.reason), event.tokens
            prompt_tokens[index // job.n] = event.prompt_tokens
            finished += 1
    if finished < size:
        return None
    choices = []
    for i in range(size):
        if job.chat:
            choice = {"index": i, "message": {"role": "assistant", "content": texts[i]}}
            choice["logprobs"] = None
        else:
            choice = {"index": i, "text": texts[i]}
            choice["logprobs"] = (
                completion_logprobs(entries[i], 0) if job.logprobs is not None else None
            )
        choice["finish_reason"] = reasons[i]
        choices.append(choice)
    return choices, usage(prompt_tokens, sum(counts))


class AdmittedStream(StreamingResponse):
    """A streaming response that gives its place back however it ends (done, client gone
    before or during the stream, server shutting down)."""

    def __init__(self, content: AsyncGenerator[str, None], release: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream")
        self.headers["Cache-Control"] = "no-cache"
        self.release = release

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.release()
            await self.body_iterator.aclose()  # stops the generation of a client that left


def sse(obj: object) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def chunk(job: Job, head: dict, index: int, text: str, reason, logprobs=None, role=False) -> dict:
    """One streaming chunk in OpenAI's format, for completions or chat completions."""
    if job.chat:
        delta = (
            {"role": "assistant", "content": text} if role else ({"content": text} if text else {})
        )
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}
    else:
        choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}
    return {**head, "choices": [choice]}


async def stream_reply(
    batcher: Batcher, job: Job, head: dict, tracker: Tracker
) -> AsyncIterator[str]:
    """Server-sent events: each engine event becomes a chunk as soon as it comes."""
    size = len(job.prompts) * job.n
    if job.chat:
        for i in range(size):
            yield sse(chunk(job, head, i, "", None, role=True))
    offsets, total, finished = [0] * size, 0, 0
    prompt_tokens = [0] * len(job.prompts)
    try:
        async for index, event in batcher.events(job, tracker):
            if isinstance(event, Finish):
                total, finished = total + event.tokens, finished + 1
                prompt_tokens[index // job.n] = event.prompt_tokens
                last = chunk(job, head, index, "", reply_reason(event.reason))
                if finished == size:  # the last chunk carries the request's usage and timings
                    last["timings"] = tracker.timings()
                    if not job.usage_chunk:
                        last["usage"] = usage(prompt_tokens, total)
                yield sse(last)
                continue
            logprobs = None
            if job.logprobs is not None:
                logprobs = completion_logprobs(event.logprobs, offsets[index])
            offsets[index] += len(event.text)
            yield sse(chunk(job, head, index, event.text, None, logprobs))
    except Exception as e:  # noqa: BLE001 - reported to the client as an error event
        console.warn(f"serve: generation failed: {type(e).__name__}: {e}")
        yield sse({"error": {"message": "generation failed", "type": "server_error"}})
        return
    if job.usage_chunk:
        used = usage(prompt_tokens, total)
        yield sse({**head, "choices": [], "usage": used, "timings": tracker.timings()})
    yield "data: [DONE]\n\n"


# --------------------------------------------------------------------------- the app


async def read_json(request: Request, limit: int) -> dict:
    """The body as a JSON object, refusing more than limit bytes before reading them all."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise ApiError(413, f"the request body is over {limit} bytes")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise ApiError(413, f"the request body is over {limit} bytes")
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        raise ApiError(400, "the request body is not valid JSON") from None
    if not isinstance(value, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return value


class Model:
    """The model being served: its checked files from the start, its engine once the weights
    have loaded (before that, /health and the routes that generate answer 503)."""

    def __init__(self, checked: Checked) -> None:
        self.checked = checked
        self.batcher: Batcher | None = None
        self.failure: BaseException | None = None  # why the weights did not load

    def ready(self) -> Batcher:
        if self.batcher is None:
            raise ApiError(
                503,
                "the model is still loading; GET /health answers 200 once it is ready",
                code="model_loading",
            )
        return self.batcher


def create_app(model: Model, options: Options, metrics: Metrics) -> FastAPI:
    """The FastAPI app: OpenAI's routes, the server routes, auth, errors in OpenAI's shape."""
    app = FastAPI(title="gptcli", docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())
    api_key = options.api_key

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), api_key.encode()):
            raise ApiError(
                401,
                "missing or wrong API key (send Authorization: Bearer KEY)",
                code="invalid_api_key",
            )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return ApiError(exc.status_code, str(exc.detail)).response()

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(Exception)
    async def failure(request: Request, exc: Exception) -> JSONResponse:
        console.warn(f"serve: unexpected failure: {type(exc).__name__}: {exc}")
        return ApiError(500, "the server failed to answer this request").response()

    @app.get("/health")
    async def health():
        """200 once the model is loaded (no API key needed: load balancers ask)."""
        model.ready()
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        authorize(request)
        return Response(metrics.exposition(), media_type=prometheus_client.CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        authorize(request)
        name = model.checked.name
        card = {"id": name, "object": "model", "created": created, "owned_by": "gptcli"}
        return {"object": "list", "data": [card]}

    @app.post("/tokenize")
    async def tokenize(request: Request) -> dict:
        authorize(request)
        return tokenized(model.ready().lm, await read_json(request, MAX_BODY))

    @app.post("/detokenize")
    async def detokenize(request: Request) -> dict:
        authorize(request)
        return detokenized(model.ready().lm, await read_json(request, MAX_BODY))

    async def answer(request: Request, chat: bool):
        authorize(request)
        batcher = model.ready()
        lm = batcher.lm
        job = parse_job(lm, await read_json(request, MAX_BODY), chat, options.max_tokens)
        if job.n > batcher.engine.slots:
            raise ApiError(
                400,
                f"'n' is {job.n}, more than the server's {batcher.engine.slots} parallel rows "
                "(gptcli serve --parallel)",
                "n",
            )
        batcher.admit()
        tracker = metrics.request(options.request_timeout)
        prefix, kind = ("chatcmpl", "chat.completion") if chat else ("cmpl", "text_completion")
        head = {"id": f"{prefix}-{uuid.uuid4().hex}", "created": int(time.time())}
        head |= {"model": lm.name}

        def release() -> None:
            batcher.release()
            tracker.finish("cancelled")  # nothing when the reply has finished

        if job.stream:
            head["object"] = kind + ".chunk" if chat else kind
            return AdmittedStream(stream_reply(batcher, job, head, tracker), release)
        try:
            reply = await whole_reply(batcher, job, tracker, request)
        finally:
            release()
        if reply is None:  # the client has gone: nobody reads an answer
            return Response(status_code=499)
        choices, used = reply
        return {**head, "object": kind, "choices": choices, "usage": used} | {
            "timings": tracker.timings()
        }

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await answer(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await answer(request, chat=True)

    return app


# --------------------------------------------------------------------------- the server


class Drain:
    """ASGI middleware that knows the requests in flight, so that at the end of the drain time
    each one still running is answered with an error object (uvicorn would cancel it
    mid-response instead: a plain-text 500 and a traceback on the terminal)."""

    def __init__(self, app: FastAPI, seconds: float) -> None:
        self.app, self.seconds = app, seconds
        self.tasks: set[asyncio.Task] = set()

    def cut_off(self) -> None:
        for task in list(self.tasks):
            task.cancel()

    async def __call__(self, scope, receive, send) -> None:
        task = asyncio.current_task()
        if scope["type"] != "http" or task is None:
            await self.app(scope, receive, send)
            return
        sent = {"start": False, "end": False}

        async def tracked(message: dict) -> None:
            if message["type"] == "http.response.start":
                sent["start"] = True
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                sent["end"] = True
            await send(message)

        self.tasks.add(task)
        try:
            await self.app(scope, receive, tracked)
        except asyncio.CancelledError:  # only shutdown cancels a request's task
            if hasattr(task, "uncancel"):  # Python 3.11+: the task goes on normally
                task.uncancel()
            if not sent["end"]:
                await self.answer_cut_off(scope, receive, send, sent["start"])
        finally:
            self.tasks.discard(task)

    async def answer_cut_off(self, scope, receive, send, started: bool) -> None:
        """The error object: as the response, or as the last event of a started stream."""
        error = ApiError(
            503,
            f"the server is shutting down: this request was cut off after the {self.seconds:g} s "
            "drain",
            code="server_shutting_down",
        )
        if not started:
            await error.response()(scope, receive, send)
            return
        body = (sse(error.body()) + "data: [DONE]\n\n").encode()
        await send({"type": "http.response.body", "body": body, "more_body": False})


class Server(uvicorn.Server):
    """uvicorn's server, stopping the way gptcli's commands do: the first SIGTERM or SIGINT
    drains the requests in flight and returns normally; a second one exits at once."""

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self.drain = drain

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Handle both signals until the process ends: a second one during the final cleanup
        also exits at once."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self.handle_exit)
        yield

    def handle_exit(self, sig: int, frame) -> None:
        if self.should_exit:
            console.info("serve: second signal, stopping at once")
            os._exit(128 + sig)
        console.info(
            f"serve: stopping; requests in flight get up to {self.drain.seconds:g} s "
            "(signal again to stop at once)"
        )
        self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's shutdown, with the requests still running at the end of the drain time
        cut off (each answered with an error) before uvicorn's own limit would cancel them."""
        timer = asyncio.get_running_loop().call_later(self.drain.seconds, self.drain.cut_off)
        try:
            await super().shutdown(sockets)
        finally:
            timer.cancel()


def hand_over(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, item: object) -> None:
    """Put item on queue from the engine's thread. After shutdown the loop is closed and no one
    waits for a row the engine drops as it stops (a cut-off request's): the item goes nowhere,
    instead of an error and a traceback on the engine's thread."""
    try:
        loop.call_soon_threadsafe(queue.put_nowait, item)
    except RuntimeError:  # the loop is closed: raised only then
        if not loop.is_closed():
            raise


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one), or one line on what is wrong."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, got {port}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        message = f"cannot listen on {host}:{port}: {e.strerror or e}"
        raise UserError(f"{message} (pick another --host or --port)") from None
    sock.set_inheritable(True)
    return sock


def load_in_background(model: Model, options: Options, url: str, server: Server) -> None:
    """Build the model on a thread while the server answers /health with 503; a failure stops
    the server and is raised by serve().

    The thread stays (idle) once the model is built: with torch's OpenMP threads, generating
    on the thread that built the weights, or after that thread ended, measured 5-10x slower
    per token on a 2-core CPU than generating on another thread while the builder lives."""

    def work() -> None:
        try:
            lm = build(model.checked)
            engine = Engine(lm.model, lm.tok, options.parallel, worker=True)
        except BaseException as e:  # noqa: BLE001 - raised again on the main thread
            model.failure = e
            server.should_exit = True
            return
        model.batcher = Batcher(lm, engine, options.max_queue, options.request_timeout)
        console.info(
            f"serve: {lm.name} ({lm.dtype}, {engine.slots} parallel rows) on {url}/v1 "
            "(Ctrl-C stops after the requests in flight)"
        )
        threading.Event().wait()  # until the process ends (a daemon thread)

    threading.Thread(target=work, name="gptcli-load", daemon=True).start()


def serve(checked: Checked, options: Options) -> None:
    """`gptcli serve`: bind, load the model, listen until SIGTERM/SIGINT, then drain and return
    (exit 0). Everything the checkpoint's metadata says was checked before (check_model)."""
    options = options.check(checked.cfg.block_size)
    host = options.host
    if host not in LOCAL_HOSTS and options.api_key is None:
        console.warn(
            f"serving on {host} without --api-key: anyone who can reach this port can use "
            "the model (set --api-key KEY)"
        )
    sock = bind(host, options.port)
    model = Model(checked)
    metrics = Metrics(slots=options.parallel)
    drain = Drain(create_app(model, options, metrics), options.drain_timeout)
    config = uvicorn.Config(
        drain,
        lifespan="off",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=options.drain_timeout + CUT_GRACE_S,
    )
    server = Server(config, drain)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{sock.getsockname()[1]}"
    if not checked.template:
        console.info(
            f"serve: {checked.ckpt} has no chat template (not an SFT checkpoint): chat "
            "completions continue the conversation's text"
        )
    console.info(f"serve: loading {checked.name}; {url}/health answers 200 once it is ready")
    load_in_background(model, options, url, server)
    try:
        server.run(sockets=[sock])
    finally:
        if model.batcher is not None:
            model.batcher.engine.close()
        sock.close()
    if model.failure is not None:
        raise model.failure
    console.info("serve: stopped")
