"""`gptcli serve` against the official `openai` client and raw HTTP, on a free local port."""

import asyncio
import http.client
import importlib.util
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

import openai
import pytest
from conftest import assert_one_line_error, gptcli, gptcli_without, run_env
from prometheus_client.parser import text_string_to_metric_families

from gptcli import serve

PROMPT = "Once upon a time"


class Served:
    """A `gptcli serve --port 0` subprocess; its URL is read from the line it logs."""

    def __init__(self, cwd, *args: str) -> None:
        command = [sys.executable, "-m", "gptcli", "serve", "--port", "0", *args]
        self.proc = subprocess.Popen(
            command,
            cwd=cwd,
            stderr=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=run_env(),
        )
        self.log: list[str] = []
        for line in self.proc.stderr:
            self.log.append(line)
            if "/v1 (" in line:
                break
        assert self.proc.poll() is None, "".join(self.log)
        self.url = line.split(" on ")[1].split()[0]
        self.host, self.port = urlsplit(self.url).hostname, urlsplit(self.url).port
        threading.Thread(target=lambda: self.log.extend(self.proc.stderr), daemon=True).start()

    def request(self, method: str, path: str, body=None, headers=None):
        """(status, parsed JSON body) of one raw request; body: a dict or raw bytes."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        conn.request(method, path, body=data, headers=headers or {})
        response = conn.getresponse()
        status, text = response.status, response.read()
        conn.close()
        return status, json.loads(text)

    def open_stream(self, body: dict) -> tuple[http.client.HTTPConnection, int]:
        """Start a streaming request; returns once the response headers arrived."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        conn.request("POST", "/v1/completions", body=json.dumps({**body, "stream": True}))
        return conn, conn.getresponse()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def base(trained):
    args = ("--dtype", "fp32", "--parallel", "2", "--max-queue", "2", "--max-tokens", str(10**6))
    served = Served(trained, "-c", "runs/mini", *args)
    yield served
    served.stop()


@pytest.fixture(scope="module")
def client(base):
    return openai.OpenAI(base_url=base.url, api_key="unused", max_retries=0)


def test_completions_match_sample_and_stream_the_same_text(trained, client):
    assert [m.id for m in client.models.list()] == ["mini"]
    args = ("--temperature", "0", "--max-new-tokens", "12", "--dtype", "fp32", "--json")
    proc = gptcli("sample", "-c", "runs/mini", "--prompt", PROMPT, *args, cwd=trained)
    assert proc.returncode == 0, proc.stderr
    expected = json.loads(proc.stdout)
    kw = {"model": "mini", "prompt": PROMPT, "max_tokens": 12, "temperature": 0}
    greedy = client.completions.create(**kw)
    assert greedy.choices[0].text == expected["text"]
    assert greedy.usage.completion_tokens == expected["tokens"]
    chunks = list(client.completions.create(**kw, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == expected["text"]
    assert chunks[-1].choices[0].finish_reason == greedy.choices[0].finish_reason
    # a base model has no template: a chat continues the conversation's text
    messages = [{"role": "user", "content": PROMPT}]
    greedy_chat = {"model": "mini", "messages": messages, "max_tokens": 12, "temperature": 0}
    reply = client.chat.completions.create(**greedy_chat)
    assert reply.choices[0].message.content == expected["text"]
    deltas = client.chat.completions.create(**greedy_chat, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in deltas) == expected["text"]


def test_seed_n_stop_and_logprobs(client):
    kw = {"model": "mini", "prompt": PROMPT, "max_tokens": 16, "temperature": 1.0, "seed": 7}
    two = client.completions.create(**kw, n=2)
    again = client.completions.create(**kw, n=2)
    texts = [c.text for c in two.choices]
    assert texts == [c.text for c in again.choices] and len(texts) == 2
    assert texts[0] != texts[1]
    full = client.completions.create(**kw).choices[0].text
    assert len(full) >= 6, full
    stop = full[4:6]
    cut = full[: full.find(stop)]
    stopped = client.completions.create(**kw, stop=[stop, "never there"])
    assert stopped.choices[0].text == cut and stopped.choices[0].finish_reason == "stop"
    chunks = [c.choices[0].text for c in client.completions.create(**kw, stop=stop, stream=True)]
    assert "".join(chunks) == cut and not any(stop in c for c in chunks)

    scored = client.completions.create(
        model="mini", prompt=PROMPT, max_tokens=5, temperature=0, logprobs=2
    )
    lp = scored.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == scored.usage.completion_tokens
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs, strict=True):
        assert chosen <= 0 and len(top) == 2 and chosen == max(top.values())  # greedy: the top


def test_four_concurrent_streaming_clients(client):
    def ask(seed: int) -> dict:
        return {"model": "mini", "prompt": PROMPT, "max_tokens": 8, "seed": seed}

    results = {}

    def stream(seed: int) -> None:
        chunks = list(client.completions.create(**ask(seed), stream=True))
        results[seed] = ("".join(c.choices[0].text for c in chunks), chunks[-1])

    threads = [threading.Thread(target=stream, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for seed in range(4):
        text, last = results[seed]
        assert text == client.completions.create(**ask(seed)).choices[0].text
        assert last.choices[0].finish_reason in ("stop", "length")


def test_full_queue_answers_429_and_a_client_that_leaves_frees_its_place(base):
    endless = {"model": "mini", "prompt": PROMPT, "max_tokens": 10**6, "temperature": 0}
    streams = [base.open_stream(endless) for _ in range(4)]  # two generating, two waiting
    assert [response.status for _, response in streams] == [200] * 4
    assert streams[0][1].readline().startswith(b"data: ")  # the first one is generating
    status, body = base.request("POST", "/v1/completions", {**endless, "max_tokens": 1})
    assert status == 429 and body["error"]["code"] == "queue_full"
    for conn, _ in streams:
        conn.close()
    deadline = time.monotonic() + 60
    while (
        status := base.request("POST", "/v1/completions", {**endless, "max_tokens": 1})[0]
    ) != 200:
        assert status == 429 and time.monotonic() < deadline
        time.sleep(0.2)


BAD = [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
    ({"prompt": PROMPT}, "'model' is required"),
    ({"model": "mini"}, "'prompt' is required"),
    ({"model": "mini", "prompt": 5}, "'prompt'"),
    ({"model": "mini", "prompt": PROMPT, "max_tokens": "5"}, "'max_tokens' must be an int"),
    ({"model": "mini", "prompt": PROMPT, "max_tokens": 0}, "max_tokens must be a positive"),
    ({"model": "mini", "prompt": PROMPT, "temperature": -1}, "temperature must be >= 0"),
    ({"model": "mini", "prompt": PROMPT, "top_p": 0}, "top_p must be in (0, 1]"),
    ({"model": "mini", "prompt": PROMPT, "top_k": -1}, "top_k"),
    ({"model": "mini", "prompt": PROMPT, "min_p": 2}, "min_p"),
    ({"model": "mini", "prompt": PROMPT, "repetition_penalty": 0}, "repetition_penalty"),
    ({"model": "mini", "prompt": PROMPT, "n": 0}, "'n' must be between"),
    ({"model": "mini", "prompt": PROMPT, "stream": "yes"}, "'stream' must be a bool"),
    ({"model": "mini", "prompt": PROMPT, "stop": [1]}, "'stop'"),
    ({"model": "mini", "prompt": PROMPT, "seed": -1}, "'seed'"),
    ({"model": "mini", "prompt": PROMPT, "logprobs": 9}, "'logprobs'"),
    (b'{"model": "mini", "prompt": "a", "temperature": NaN}', "finite"),
]
BAD_CHAT = [
    ({"model": "mini", "messages": "hi"}, "'messages'"),
    ({"model": "mini", "messages": [{"role": "tool", "content": "x"}]}, "'role'"),
    ({"model": "mini", "messages": [{"role": "user", "content": 5}]}, "'content'"),
]


def test_bad_requests_get_openai_errors_and_the_server_stays_up(base, client):
    cases = [("/v1/completions", *c) for c in BAD] + [
        ("/v1/chat/completions", *c) for c in BAD_CHAT
    ]
    for path, body, needle in cases:
        status, answer = base.request("POST", path, body)
        assert status == 400 and needle in answer["error"]["message"], (body, answer)
    status, answer = base.request("POST", "/v1/completions", {"model": "gpt-4", "prompt": "a"})
    assert status == 404 and answer["error"]["code"] == "model_not_found"
    status, answer = base.request("POST", "/v1/completions", b"{" + b" " * (2 << 20) + b"}")
    assert status == 413 and "error" in answer
    for method, path in (("GET", "/v1/nowhere"), ("GET", "/v1/completions")):
        status, answer = base.request(method, path)
        assert status in (404, 405) and answer["error"]["type"] == "invalid_request_error"
    # extreme but valid settings still give a distribution to sample from
    for extreme in (
        {"temperature": 1e-300},
        {"temperature": 1e-40},
        {"repetition_penalty": 1e-300},
    ):
        body = {"model": "mini", "prompt": PROMPT, "max_tokens": 2, **extreme}
        status, answer = base.request("POST", "/v1/completions", body)
        assert status == 200, (extreme, answer)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="mini", prompt=PROMPT, max_tokens=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=[{"role": "user", "content": "x"}])
    assert base.request("GET", "/v1/models")[0] == 200 and base.proc.poll() is None


def metric(base, name: str) -> float:
    """One sample's value from GET /metrics, read as Prometheus reads it."""
    conn = http.client.HTTPConnection(base.host, base.port, timeout=60)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    return next(s.value for s in samples if s.name == name)


def test_health_tokenize_token_prompts_metrics_and_timings(base, client):
    assert base.request("GET", "/health") == (200, {"status": "ok"})
    status, tokens = base.request("POST", "/tokenize", {"model": "mini", "prompt": PROMPT})
    ids = tokens["tokens"]
    assert status == 200 and tokens["count"] == len(ids) and tokens["max_model_len"] == 32
    bare = base.request("POST", "/tokenize", {"prompt": PROMPT, "add_special_tokens": False})[1]
    assert bare["tokens"] == ids[1:]  # a text prompt is read as a new document
    assert base.request("POST", "/detokenize", {"tokens": bare["tokens"]}) == (
        200,
        {"prompt": PROMPT},
    )
    # token ids as the prompt: the same reply as the text, one choice per list of ids
    greedy = {"model": "mini", "max_tokens": 6, "temperature": 0}
    text = client.completions.create(prompt=PROMPT, **greedy).choices[0].text
    by_ids = client.completions.create(prompt=ids, **greedy)
    assert by_ids.choices[0].text == text and by_ids.usage.prompt_tokens == len(ids)
    two = client.completions.create(prompt=[ids, ids[:2]], **greedy)
    assert len(two.choices) == 2 and two.choices[0].text == text
    for bad in ([ids + [400]], [[]], [ids, PROMPT]):
        status, answer = base.request("POST", "/v1/completions", {**greedy, "prompt": bad})
        assert status == 400 and answer["error"]["param"] == "prompt", answer
    status, answer = base.request("POST", "/detokenize", {"tokens": [-1]})
    assert status == 400 and "outside this model's 0..399" in answer["error"]["message"]

    # ignore_eos gives fixed lengths; the counters move by what the reply says it used
    before = {
        n: metric(base, n) for n in ("gptcli_generation_tokens_total", "gptcli_prompt_tokens_total")
    }
    fixed = {"model": "mini", "prompt": ids, "max_tokens": 20, "ignore_eos": True}
    status, reply = base.request("POST", "/v1/completions", fixed)
    assert status == 200 and reply["usage"]["completion_tokens"] == 20
    timings = reply["timings"]
    assert timings["predicted_n"] == 20 and timings["prompt_n"] == len(ids)
    assert timings["predicted_per_second"] > 0 and timings["prompt_ms"] > 0
    assert (
        metric(base, "gptcli_generation_tokens_total")
        == before["gptcli_generation_tokens_total"] + 20
    )
    assert metric(base, "gptcli_prompt_tokens_total") == before["gptcli_prompt_tokens_total"] + len(
        ids
    )
    assert metric(base, "gptcli_time_to_first_token_seconds_count") >= 1
    assert metric(base, "gptcli_requests_running") == 0
    # a stream's last chunk carries the usage and timings too
    stream = client.completions.create(
        model="mini", prompt=ids, max_tokens=20, stream=True, extra_body={"ignore_eos": True}
    )
    chunks = list(stream)
    last = chunks[-1].model_dump()
    assert last["usage"]["completion_tokens"] == 20 and last["timings"]["predicted_n"] == 20

    # the server's --max-tokens bounds a request
    status, answer = base.request("POST", "/v1/completions", {**fixed, "max_tokens": 10**6 + 1})
    assert status == 400 and answer["error"]["param"] == "max_tokens"
    assert "limit of 1000000 tokens" in answer["error"]["message"]


def test_sigterm_drains_the_request_in_flight_then_exits_0(base):
    conn, response = base.open_stream(
        {"model": "mini", "prompt": PROMPT, "max_tokens": 30, "temperature": 0}
    )
    assert response.readline().startswith(b"data: ")  # generating
    base.proc.send_signal(signal.SIGTERM)
    lines = [line.strip() for line in response.read().decode().splitlines() if line.strip()]
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2][6:])["choices"][0]["finish_reason"] in ("stop", "length")
    assert base.proc.wait(timeout=60) == 0, "".join(base.log)


def test_api_key_chat_template_and_second_signal(trained, chat_trained):
    served = Served(trained, "-c", str(chat_trained), "--api-key", "s3cret", "--dtype", "fp32")
    try:
        assert served.request("GET", "/v1/models")[0] == 401
        wrong = {"Authorization": "Bearer nope"}
        assert served.request("GET", "/v1/models", headers=wrong)[0] == 401
        status, body = served.request("POST", "/v1/completions", {"model": "chat-sft"}, wrong)
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=served.url, api_key="nope", max_retries=0).models.list()
        client = openai.OpenAI(base_url=served.url, api_key="s3cret", max_retries=0)
        auth = {"Authorization": "Bearer s3cret"}
        args = ("--prompt", "Count to 3.", "--temperature", "0", "--dtype", "fp32", "--json")
        proc = gptcli("sample", "-c", str(chat_trained), *args, cwd=trained)
        expected = json.loads(proc.stdout)["text"]  # sample applies an SFT run's template
        reply = client.chat.completions.create(
            model="chat-sft",
            messages=[{"role": "user", "content": "Count to 3."}],
            max_tokens=8,
            temperature=0,
        )
        assert reply.choices[0].message.content == expected
        # a second signal while draining exits at once: a request whose body is still coming
        slow = http.client.HTTPConnection(served.host, served.port, timeout=60)
        slow.putrequest("POST", "/v1/completions")
        slow.putheader("Content-Length", "100")
        slow.endheaders(b'{"model": ')
        assert served.request("GET", "/v1/models", headers=auth)[0] == 200  # after slow's start
        served.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 60
        while not any("stopping" in line for line in served.log):
            assert time.monotonic() < deadline, "".join(served.log)
            time.sleep(0.1)
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(timeout=60) == 128 + signal.SIGTERM
        log = "".join(served.log)
        assert "second signal" in log and "serve: stopped" not in log  # it did not wait
    finally:
        served.stop()


def test_serve_refuses_a_classifier_and_needs_its_extra(trained, tmp_path, gptcli_inproc):
    from test_chat import fake_classifier

    proc = gptcli_inproc("serve", "-c", str(fake_classifier(trained, tmp_path)), cwd=trained)
    assert_one_line_error(proc, "classifier")
    for module in ("fastapi", "prometheus_client"):
        proc = gptcli_without(module, "serve", "-c", "runs/mini", cwd=trained)
        assert_one_line_error(proc, "pip install 'gptcli[serve]'")


def test_a_bad_checkpoint_exits_2_before_binding_and_bad_weights_after(trained, tmp_path):
    source = trained / "runs" / "mini" / "checkpoints" / "step-0000012"
    bad = tmp_path / "bad"
    shutil.copytree(source, bad)
    shutil.copy(trained / "runs" / "mini" / "tokenizer.json", bad)
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "n_layer": "two"}))
    with socket.socket() as held:  # a port taken: binding first would fail on it instead
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = str(held.getsockname()[1])
        proc = gptcli("serve", "-c", str(bad), "--port", port, cwd=trained)
    assert_one_line_error(proc, "config.json", "n_layer")
    (bad / "config.json").write_text(json.dumps(config))
    (bad / "model.safetensors").write_bytes(b"\0" * 64)  # found once the port is bound
    proc = gptcli("serve", "-c", str(bad), "--port", "0", cwd=trained)
    assert proc.returncode == 2 and "model.safetensors" in proc.stderr.splitlines()[-1]
    assert "/health" in proc.stderr and "Traceback" not in proc.stderr


def test_health_is_503_until_the_model_has_loaded(trained, monkeypatch):
    from starlette.testclient import TestClient

    from gptcli import engine, serve

    monkeypatch.chdir(trained)
    checked = engine.check_model("runs/mini", "serve", dtype="fp32")
    model = serve.Model(checked)
    options = serve.Options(parallel=1).check(checked.cfg.block_size)
    app = serve.create_app(model, options, serve.Metrics(slots=1))
    with TestClient(app) as http_client:
        answer = http_client.get("/health")
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "model_loading"
        body = {"model": "mini", "prompt": PROMPT}
        answer = http_client.post("/v1/completions", json=body)
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "model_loading"
        assert http_client.get("/v1/models").json()["data"][0]["id"] == "mini"
        lm = engine.build(checked)
        model.batcher = serve.Batcher(lm, engine.Engine(lm.model, lm.tok, 1, worker=True), 0, None)
        assert http_client.get("/health").status_code == 200
        model.batcher.engine.close()


def test_request_timeout_and_requests_cut_off_at_shutdown(trained):
    args = ("--max-tokens", str(10**6), "--request-timeout", "4", "--drain-timeout", "1")
    args += ("--parallel", "1")
    served = Served(trained, "-c", "runs/mini", "--dtype", "fp32", *args)
    try:
        endless = {"model": "mini", "prompt": PROMPT, "max_tokens": 10**6, "ignore_eos": True}
        status, reply = served.request("POST", "/v1/completions", endless)
        assert status == 200 and reply["choices"][0]["finish_reason"] == "length"
        assert 0 < reply["usage"]["completion_tokens"] < 10**6
        # one request generating, one waiting: SIGTERM, then both are cut off after 1 s
        conn, response = served.open_stream(endless)
        assert response.readline().startswith(b"data: ")
        waiting = http.client.HTTPConnection(served.host, served.port, timeout=60)
        waiting.request("POST", "/v1/completions", json.dumps(endless))
        deadline = time.monotonic() + 60
        while metric(served, "gptcli_requests_waiting") != 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        served.proc.send_signal(signal.SIGTERM)
        answer = waiting.getresponse()
        error = json.loads(answer.read())["error"]
        assert answer.status == 503 and error["code"] == "server_shutting_down"
        events = [ln for ln in response.read().decode().splitlines() if ln.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        assert json.loads(events[-2][6:])["error"]["code"] == "server_shutting_down"
        assert served.proc.wait(timeout=60) == 0
        log = "".join(served.log)
        assert "Traceback" not in log and "ERROR" not in log, log
    finally:
        served.stop()


def test_an_event_after_shutdown_goes_nowhere_instead_of_raising_on_the_engine_thread():
    """At shutdown the engine drops the rows of cut-off requests after the server's loop has
    closed; handing those events over must not raise (a traceback in the server's log)."""
    loop = asyncio.new_event_loop()
    queue = asyncio.Queue()
    serve.hand_over(loop, queue, (0, "piece"))
    loop.run_until_complete(asyncio.sleep(0))
    assert queue.get_nowait() == (0, "piece")
    loop.close()
    serve.hand_over(loop, queue, (0, "after"))  # nothing raised
    assert queue.empty()


# --------------------------------------------------------------------------- continuous batching


@pytest.fixture(scope="module")
def wide(trained):
    args = ("--dtype", "fp32", "--parallel", "16", "--max-tokens", str(10**6))
    served = Served(trained, "-c", "runs/mini", *args)
    yield served
    served.stop()


def test_sixteen_concurrent_requests_get_the_texts_they_get_alone(wide):
    """16 clients at once (greedy and seeded sampling, completions and chat) each get the text
    the same request gets alone, except past an (almost) tied greedy token."""
    client = openai.OpenAI(base_url=wide.url, api_key="unused", max_retries=0)

    def ask(i: int) -> dict:
        sampled = {"temperature": 1.0, "seed": i} if i % 2 else {"temperature": 0}
        return {"model": "mini", "prompt": PROMPT[: 4 + i], "max_tokens": 24, **sampled}

    def run(i: int):
        return client.completions.create(**ask(i), logprobs=2).choices[0]

    alone = [run(i) for i in range(16)]
    together: dict[int, object] = {}
    threads = [
        threading.Thread(target=lambda i=i: together.__setitem__(i, run(i))) for i in range(16)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, solo in enumerate(alone):
        got = together[i]
        if got.text == solo.text:
            continue
        # the first differing token must be a near-tie of greedy decoding
        lp = solo.logprobs
        pairs = zip(lp.tokens, got.logprobs.tokens, strict=False)
        k = next(k for k, (a, b) in enumerate(pairs) if a != b)
        top = sorted(lp.top_logprobs[k].values(), reverse=True)
        assert i % 2 == 0 and top[0] - top[1] < 1e-4, (i, solo.text, got.text)


def test_an_abandoned_request_frees_its_rows_for_the_next(wide):
    """Two endless non-streaming requests whose clients give up: both are cancelled as their
    clients go (every row is free again), and the next request is answered."""
    base = wide
    endless = {"model": "mini", "prompt": PROMPT, "max_tokens": 10**6, "ignore_eos": True}
    for _ in range(2):
        conn = http.client.HTTPConnection(base.host, base.port, timeout=1)
        conn.request("POST", "/v1/completions", json.dumps(endless))
        with pytest.raises(TimeoutError):
            conn.getresponse()
        conn.close()
    deadline = time.monotonic() + 60
    while metric(base, "gptcli_slots_used") != 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    status, reply = base.request("POST", "/v1/completions", {**endless, "max_tokens": 3})
    assert status == 200 and reply["usage"]["completion_tokens"] == 3


@pytest.mark.skipif(
    importlib.util.find_spec("llguidance") is None, reason="needs the structured extra"
)
def test_response_format_json_schema_streaming_and_not(wide):
    jsonschema = pytest.importorskip("jsonschema")
    client = openai.OpenAI(base_url=wide.url, api_key="unused", max_retries=0)
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 8}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}
    ask = {"model": "mini", "max_tokens": 60, "temperature": 1.0, "seed": 3}
    messages = [{"role": "user", "content": PROMPT}]
    reply = client.chat.completions.create(**ask, messages=messages, response_format=fmt)
    assert reply.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(reply.choices[0].message.content), schema)
    chunks = client.completions.create(
        **ask, prompt=PROMPT, stream=True, extra_body={"structured_outputs": {"choice": ["a", "b"]}}
    )
    assert "".join(c.choices[0].text for c in chunks) in ("a", "b")
    with pytest.raises(openai.BadRequestError, match="stop"):
        client.chat.completions.create(**ask, messages=messages, response_format=fmt, stop="x")
    with pytest.raises(openai.BadRequestError, match="look-around"):
        client.completions.create(
            **ask, prompt=PROMPT, extra_body={"structured_outputs": {"regex": "(?=a)b"}}
        )
