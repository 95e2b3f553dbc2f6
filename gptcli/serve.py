"""`gptcli serve`: OpenAI's HTTP API (models, completions, chat completions) over one checkpoint.

Every request runs on the one inference engine, side by side with the others (continuous
batching: a request joins the running batch at the next decode step and leaves it when done or
when its client goes away). The event loop only parses, admits (429 beyond the engine's rows
plus --max-queue) and formats; every input is checked by hand into OpenAI-style errors, so bad
input is never a 500.
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
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import dataclass

from gptcli import console
from gptcli.chat import reply_reason
from gptcli.console import UserError
from gptcli.engine import Engine, Event, Finish, LoadedModel, Piece, default_slots
from gptcli.engine import Request as EngineRequest
from gptcli.recipe import SampleConfig

try:
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException
except ImportError as e:  # the optional extra
    raise UserError("gptcli serve needs FastAPI and uvicorn: pip install 'gptcli[serve]'") from e

MAX_BODY = 1 << 20  # bytes: far more than any prompt that fits a context
MAX_N = 16  # choices per request (each one is a row of the batch)
MAX_STOP = 16
MAX_PROMPTS = 16
DISCONNECT_CHECK_S = 0.05  # how often a waiting non-streaming request checks its client
DRAIN_S = 30  # in-flight requests get this long after SIGTERM/SIGINT, then they are cut off
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
# the API's names for the sampling settings
API_NAMES = {"max_new_tokens": "max_tokens"}


class ApiError(Exception):
    """A request the server refuses, as OpenAI's error object with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code=None) -> None:
        super().__init__(message)
        self.status, self.param, self.code = status, param, code

    def response(self) -> JSONResponse:
        kind = {401: "authentication_error", 429: "rate_limit_error"}.get(
            self.status, "invalid_request_error" if self.status < 500 else "server_error"
        )
        error = {"message": str(self), "type": kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": error}, status_code=self.status)


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
    body: dict, defaults: SampleConfig, chat: bool
) -> tuple[SampleConfig, int, int | None]:
    """The request's settings on top of the run's `sample:` defaults; n; seed."""
    max_tokens = field(body, "max_tokens", "int")
    if chat:
        max_tokens = field(body, "max_completion_tokens", "int", max_tokens)
    values = {
        "max_new_tokens": max_tokens,
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


def parse_job(lm: LoadedModel, body: dict, chat: bool) -> Job:
    model = field(body, "model", "string")
    if model is None:
        raise ApiError(400, "'model' is required: GET /v1/models lists it", "model")
    if model != lm.name:
        raise ApiError(
            404,
            f"the model '{model}' does not exist; this server serves '{lm.name}'",
            "model",
            "model_not_found",
        )
    params, n, seed = sampling(body, lm.defaults, chat)
    stream = field(body, "stream", "bool", False)
    options = field(body, "stream_options", "object", {})
    usage_chunk = field(options, "include_usage", "bool", False)
    logprobs = None
    if chat:
        prompts = [lm.chat_ids(chat_messages(body))]
    else:
        texts = string_list(body, "prompt", MAX_PROMPTS)
        if texts is None:
            raise ApiError(400, "'prompt' is required", "prompt")
        prompts = [lm.text_ids(t) for t in texts]
        logprobs = field(body, "logprobs", "int")
        if logprobs is not None and not 0 <= logprobs <= 5:
            raise ApiError(400, f"'logprobs' must be between 0 and 5, got {logprobs}", "logprobs")
        if field(body, "echo", "bool", False):
            raise ApiError(400, "'echo' is not supported", "echo")
    return Job(prompts, params, n, seed, chat, stream, logprobs, usage_chunk)


# --------------------------------------------------------------------------- generation


class Batcher:
    """Admits requests (at most the engine's slots plus max_queue at once; more get 429) and
    runs them side by side on the one engine, their events delivered on the event loop."""

    def __init__(self, lm: LoadedModel, engine: Engine, max_queue: int) -> None:
        self.lm, self.engine = lm, engine
        self.limit = engine.slots + max_queue
        self.admitted = 0

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

    async def events(
        self, job: Job, client: Request | None = None
    ) -> AsyncIterator[tuple[int, Event]]:
        """Every choice's events, tagged with its index, as the engine produces them. A client
        that goes away (checked between events) cancels every row of its request."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        handles = []
        for p, ids in enumerate(job.prompts):
            request = EngineRequest(
                ids, job.params, job.seed, job.n, self.lm.enders(job.chat), job.logprobs
            )

            def sink(event, p=p) -> None:
                loop.call_soon_threadsafe(events.put_nowait, (p, event))

            handles.append(self.engine.submit(request, sink))
        remaining = len(job.prompts) * job.n
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
                remaining -= isinstance(event, Finish)
                yield p * job.n + event.row, event
        finally:
            for handle in handles:
                handle.cancel()


def usage(job: Job, prompt_tokens: list[int], completion: int) -> dict:
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
    batcher: Batcher, job: Job, client: Request
) -> tuple[list[dict], dict] | None:
    """A non-streaming request's choices and usage (None: the client went away)."""
    size = len(job.prompts) * job.n
    texts, entries = [""] * size, [[] for _ in range(size)]
    reasons, counts = ["length"] * size, [0] * size
    prompt_tokens = [0] * len(job.prompts)
    finished = 0
    async for index, event in batcher.events(job, client):
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
    return choices, usage(job, prompt_tokens, sum(counts))


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


async def stream_reply(batcher: Batcher, job: Job, head: dict) -> AsyncIterator[str]:
    """Server-sent events: each engine event becomes a chunk as soon as it comes."""
    size = len(job.prompts) * job.n
    if job.chat:
        for i in range(size):
            yield sse(chunk(job, head, i, "", None, role=True))
    offsets, total = [0] * size, 0
    prompt_tokens = [0] * len(job.prompts)
    try:
        async for index, event in batcher.events(job):
            if isinstance(event, Finish):
                total += event.tokens
                prompt_tokens[index // job.n] = event.prompt_tokens
                yield sse(chunk(job, head, index, "", reply_reason(event.reason)))
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
        yield sse({**head, "choices": [], "usage": usage(job, prompt_tokens, total)})
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


def create_app(batcher: Batcher, api_key: str | None) -> FastAPI:
    """The FastAPI app: the three OpenAI routes, auth, and errors in OpenAI's shape."""
    app = FastAPI(title="gptcli", docs_url=None, redoc_url=None, openapi_url=None)
    lm = batcher.lm
    created = int(time.time())

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

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        authorize(request)
        card = {"id": lm.name, "object": "model", "created": created, "owned_by": "gptcli"}
        return {"object": "list", "data": [card]}

    async def answer(request: Request, chat: bool):
        authorize(request)
        job = parse_job(lm, await read_json(request, MAX_BODY), chat)
        if job.n > batcher.engine.slots:
            raise ApiError(
                400,
                f"'n' is {job.n}, more than the server's {batcher.engine.slots} parallel rows "
                "(--parallel)",
                "n",
            )
        batcher.admit()
        prefix, kind = ("chatcmpl", "chat.completion") if chat else ("cmpl", "text_completion")
        head = {"id": f"{prefix}-{uuid.uuid4().hex}", "created": int(time.time())}
        head |= {"model": lm.name}
        if job.stream:
            head["object"] = kind + ".chunk" if chat else kind
            return AdmittedStream(stream_reply(batcher, job, head), batcher.release)
        try:
            reply = await whole_reply(batcher, job, request)
        finally:
            batcher.release()
        if reply is None:  # the client has gone: nobody reads an answer
            return Response(status_code=499)
        choices, used = reply
        return {**head, "object": kind, "choices": choices, "usage": used}

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await answer(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await answer(request, chat=True)

    return app


# --------------------------------------------------------------------------- the server


class Server(uvicorn.Server):
    """uvicorn's server, stopping the way gptcli's commands do: the first SIGTERM or SIGINT
    drains the requests in flight and returns normally; a second one exits at once."""

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
            f"serve: stopping; requests in flight get up to {DRAIN_S} s "
            "(signal again to stop at once)"
        )
        self.should_exit = True


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


def serve(
    lm: LoadedModel,
    host: str,
    port: int,
    api_key: str | None,
    max_queue: int,
    parallel: int | None = None,
) -> None:
    """`gptcli serve`: listen until SIGTERM/SIGINT, then drain and return (exit 0)."""
    if max_queue < 0:
        raise UserError(f"--max-queue must be >= 0, got {max_queue}")
    if api_key is not None and not api_key:
        raise UserError("--api-key must not be empty")
    if host not in LOCAL_HOSTS and api_key is None:
        console.warn(
            f"serving on {host} without --api-key: anyone who can reach this port can use "
            "the model (set --api-key KEY)"
        )
    sock = bind(host, port)
    engine = Engine(lm.model, lm.tok, parallel or default_slots(lm.model.wte.weight.device))
    app = create_app(Batcher(lm, engine, max_queue), api_key)
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=DRAIN_S,
    )
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    if not lm.template:
        console.info(
            f"serve: {lm.ckpt} has no chat template (not an SFT checkpoint): chat "
            "completions continue the conversation's text"
        )
    console.info(
        f"serve: {lm.name} ({lm.dtype}, {engine.slots} parallel rows) on "
        f"http://{shown}:{bound}/v1 "
        "(Ctrl-C stops after the requests in flight)"
    )
    try:
        Server(config).run(sockets=[sock])
    finally:
        engine.close()
        sock.close()
    console.info("serve: stopped")
