"""A large Parquet corpus to shards: throughput against tiktoken, peak memory, resuming.

    python benchmarks/bench_tokenize_large.py --size-gb 2     # the recorded run (heavy: an hour
                                                              #   or more on 2 cores; run it
                                                              #   on a quiet machine)
    python benchmarks/bench_tokenize_large.py --size-gb 0.1   # the short form: proves it works

The corpus is made once into build/bench-corpus-<size>gb/ (never committed): documents of 1 to 6
paragraphs drawn (seeded) from ../shared/data's text, where 1 word in 20 is replaced by a word
from an open-ended Zipf vocabulary (rank r -> a made-up word of its own), so the number of
distinct words keeps growing with the corpus as in real web text and the BPE trainer's word
table grows with it. Files of about 256 MB with zstd row groups of 20,000 rows, as FineWeb's.

It measures, each `gptcli tokenize` a child process whose peak RSS is the sum over its process
tree, sampled from /proc:
1. a first run: BPE training on the `tokenizer.train_bytes` sample, then encoding;
2. encoding alone (the tokenizer reused) against tiktoken's encode_ordinary_batch on the same
   texts read a row group at a time in this process (ratio > 1: gptcli faster), in wall time
   and in CPU time (all threads; robust to other processes' load);
3. the CPU time per MB of the main thread's own work (reading, decoding and routing documents,
   no encoding) and of encoding: what bounds the throughput on more cores;
4. a kill -9 once half the tokens are written, then the rerun's wall and CPU time against the
   remaining half of run 2's (target: within 10 %), and that its shards equal run 2's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gptcli import console, recipe, tokenizer  # noqa: E402
from gptcli.data import split  # noqa: E402
from gptcli.data.manifest import read_manifest  # noqa: E402
from gptcli.data.shards import safe_pieces  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
ROW_GROUP = 20_000
FILE_BYTES = 256_000_000
_WORD = re.compile(r"\S+")


def paragraphs() -> list[str]:
    """Every paragraph of the shared text files (and the text fields of its JSONL files)."""
    out: list[str] = []
    for p in sorted(SHARED.rglob("*")):
        if p.suffix == ".txt":
            out += [t for t in p.read_text(errors="replace").split("\n\n") if t.strip()]
        elif p.suffix == ".jsonl":
            for line in p.read_text(errors="replace").splitlines():
                try:
                    value = json.loads(line)
                except ValueError:
                    continue
                if isinstance(value, dict):
                    out += [v for v in value.values() if isinstance(v, str) and len(v) > 40]
    return out


def made_up_word(rank: int) -> str:
    digest = hashlib.blake2b(rank.to_bytes(8, "little"), digest_size=8).digest()
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    return "".join(letters[b % 26] for b in digest[: 3 + rank % 6])


def perturbed(text: str, rng: random.Random) -> str:
    """1 word in 20 replaced by a word of Zipf rank ~ 1/u (an ever-growing vocabulary)."""

    def swap(m: re.Match) -> str:
        if rng.random() >= 0.05:
            return m.group(0)
        return made_up_word(int(1 / max(rng.random(), 1e-9)))

    return _WORD.sub(swap, text)


def make_corpus(size_gb: float) -> Path:
    """The Parquet files in build/ (made once per size)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = REPO / "build" / f"bench-corpus-{size_gb:g}gb"
    done = folder / ".complete"
    if done.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    paras, rng = paragraphs(), random.Random(0)
    schema = pa.schema([("id", pa.int64()), ("text", pa.string())])
    total, n, index = 0, 0, 0
    while total < size_gb * 1e9:
        path = folder / f"part-{index:04d}.parquet"
        written = 0
        with pq.ParquetWriter(path, schema, compression="zstd") as writer:
            while written < FILE_BYTES and total + written < size_gb * 1e9:
                rows = [
                    perturbed("\n\n".join(rng.choices(paras, k=rng.randint(1, 6))), rng)
                    for _ in range(ROW_GROUP)
                ]
                written += sum(len(r.encode()) for r in rows)
                table = pa.table({"id": range(n, n + len(rows)), "text": rows}, schema=schema)
                writer.write_table(table)
                n += len(rows)
        total += written
        index += 1
    done.write_text(f"{total} bytes of text, {n} documents\n")
    return folder


def tree_rss(pid: int) -> int:
    """Resident bytes of pid and all its descendants, from /proc."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) * 1024
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, AttributeError):
            continue
    return total


# gptcli with its progress records every CHUNK characters (the default, 64 MiB, leaves a short
# corpus too few of them to stop at half)
LAUNCH = (
    "import runpy, sys\n"
    "from gptcli.data import tokenize\n"
    "tokenize.CHUNK_CHARS = int(sys.argv.pop(1))\n"
    "runpy.run_module('gptcli', run_name='__main__')\n"
)


def tokenize_child(recipe_file: Path, cwd: Path, chunk: int, stop=None) -> dict:
    """Run `gptcli tokenize` as a child: wall s, peak RSS summed over its process tree, exit
    code; stop() is polled and kills it with SIGKILL when it returns True."""
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, str(chunk), "tokenize", str(recipe_file)],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak, t0 = 0, time.perf_counter()
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)
    reader.start()
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        peak = max(peak, tree_rss(proc.pid))
        if stop is not None and stop():
            proc.send_signal(signal.SIGKILL)
            _, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join(10)
    if proc.returncode not in (0, -9):
        raise SystemExit("".join(err))
    cpu = usage.ru_utime + usage.ru_stime  # robust to other processes' load, unlike wall
    return {"wall": wall, "cpu": cpu, "rss": peak, "code": proc.returncode, "stderr": "".join(err)}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def cpu_per_stage(r, run: Path, corpus: Path, enc) -> tuple[float, float, float]:
    """(MB of text, CPU s of the main thread's reading, routing and cutting, CPU s of tiktoken's
    encode_ordinary_batch on the same texts, a row group at a time, in this process)."""
    import pyarrow.parquet as pq

    t0, n_bytes = time.process_time(), 0
    tail = split.tail_split_chars(r.data, r.seed, run)
    for _, text, _ in split.routed(r.data, r.seed, run, tail):
        n_bytes += len(text.encode())
        safe_pieces(text)  # what the writer does with each document before encoding
    route_cpu = time.process_time() - t0
    t0 = time.process_time()
    for f in sorted(corpus.glob("*.parquet")):
        for batch in pq.ParquetFile(f).iter_batches(batch_size=ROW_GROUP, columns=["text"]):
            enc.tiktoken.encode_ordinary_batch(batch.column(0).to_pylist())
    encode_cpu = time.process_time() - t0
    return n_bytes / 1e6, route_cpu, encode_cpu


def peer_run(corpus: Path, enc) -> tuple[float, float]:
    """Wall and CPU s of tiktoken's encode_ordinary_batch on the corpus, a row group at a time."""
    import pyarrow.parquet as pq

    t0, c0 = time.perf_counter(), time.process_time()
    for f in sorted(corpus.glob("*.parquet")):
        for batch in pq.ParquetFile(f).iter_batches(batch_size=ROW_GROUP, columns=["text"]):
            enc.tiktoken.encode_ordinary_batch(batch.column(0).to_pylist())
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-gb", type=float, default=2.0)
    ap.add_argument("--vocab", type=int, default=4096)
    args = ap.parse_args()
    console.set_quiet(True)
    t0 = time.perf_counter()
    corpus = make_corpus(args.size_gb)
    made = time.perf_counter() - t0
    work = REPO / "build" / f"bench-run-{args.size_gb:g}gb"
    work.mkdir(parents=True, exist_ok=True)
    recipe_file = work / "big.yaml"
    recipe_file.write_text(
        f"name: big\ndata:\n  source: {corpus}\ntokenizer:\n  vocab_size: {args.vocab}\n"
    )
    run = work / "runs" / "big"
    shards = run / "data"
    for f in ("manifest.json", "train.bin", "val.bin", ".progress.json"):
        (shards / f).unlink(missing_ok=True)
    (run / tokenizer.TOKENIZER_FILE).unlink(missing_ok=True)

    chunk = min(64 << 20, int(args.size_gb * 1e9 / 32))
    first = tokenize_child(recipe_file, work, chunk)  # BPE on its sample, then encoding
    manifest = read_manifest(run)
    mb = (manifest["train"]["bytes"] + manifest["val"]["bytes"]) / 1e6
    tokens = manifest["train"]["tokens"] + manifest["val"]["tokens"]

    def encode_only() -> dict:  # the tokenizer is reused: read, split, encode, write
        (shards / "train.bin").unlink()
        return tokenize_child(recipe_file, work, chunk)

    enc = tokenizer.Encoder(tokenizer.load(run))
    ours = encode_only()
    peer, peer_cpu = peer_run(corpus, enc)
    ours2 = encode_only()  # interleaved, best of two: a noisy machine affects both alike
    peer2, peer_cpu2 = peer_run(corpus, enc)
    peer, peer_cpu = min(peer, peer2), min(peer_cpu, peer_cpu2)
    t_ours, cpu_ours = min(ours["wall"], ours2["wall"]), min(ours["cpu"], ours2["cpu"])
    want = {s: sha256(shards / f"{s}.bin") for s in ("train", "val")}

    r = recipe.load(recipe_file)
    text_mb, route_cpu, encode_cpu = cpu_per_stage(r, run, corpus, enc)

    train_bytes = manifest["train"]["tokens"] * enc.dtype.itemsize
    progress_file = shards / ".progress.json"

    def half_written() -> bool:
        try:
            return json.loads(progress_file.read_text())["sizes"]["train"] >= train_bytes / 2
        except (OSError, ValueError, KeyError):
            return False

    (shards / "train.bin").unlink()
    killed = tokenize_child(recipe_file, work, chunk, stop=half_written)
    if killed["code"] != -9:
        raise SystemExit("the run ended before half its tokens were recorded")
    done = json.loads(progress_file.read_text())["sizes"]["train"] / train_bytes
    rest = tokenize_child(recipe_file, work, chunk)
    if "resuming after" not in rest["stderr"]:
        raise SystemExit("the rerun did not resume:\n" + rest["stderr"])
    same = want == {s: sha256(shards / f"{s}.bin") for s in ("train", "val")}
    expected, expected_cpu = (1 - done) * t_ours, (1 - done) * cpu_ours

    cores = os.cpu_count()
    print(
        f"corpus: {len(list(corpus.glob('*.parquet')))} Parquet files in {corpus}, "
        f"{mb:,.0f} MB of text, {tokens:,} tokens (made in {made:.0f} s, or cached); "
        f"vocab {args.vocab}, {cores} cores, encoder {enc.name}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print()
    print("| measure | gptcli | peer or target | ratio |")
    print("| --- | ---: | ---: | ---: |")
    print(
        f"| encode MB/s: `gptcli tokenize` (tokenizer reused) vs tiktoken "
        f"encode_ordinary_batch | {mb / t_ours:.1f} | {mb / peer:.1f} | {peer / t_ours:.2f} |"
    )
    print(
        f"| encode CPU s (all threads): `gptcli tokenize` (tokenizer reused) vs tiktoken "
        f"| {cpu_ours:.0f} s | {peer_cpu:.0f} s | {peer_cpu / cpu_ours:.2f} |"
    )
    print(
        f"| first run (BPE on its train_bytes sample + encode): wall s, peak RSS summed "
        f"| {first['wall']:.0f} s, {first['rss'] / 1e6:,.0f} MB | ≤ 1,500 MB | |"
    )
    print(
        f"| encoding run: peak RSS summed | {max(ours['rss'], ours2['rss']) / 1e6:,.0f} MB "
        f"| ≤ 1,500 MB | |"
    )
    print(
        f"| main thread (read, decode, route, cut; no encoding): CPU s per GB, MB/s on one core "
        f"| {route_cpu / text_mb * 1000:.1f} s, {text_mb / route_cpu:.1f} MB/s | | |"
    )
    print(
        f"| encoding (tiktoken, all threads): CPU s per GB, MB/s per core "
        f"| {encode_cpu / text_mb * 1000:.1f} s, {text_mb / encode_cpu:.1f} MB/s | | |"
    )
    print(
        f"| kill -9 at {done:.0%} of the train tokens, then the rerun: wall s vs the "
        f"remaining {1 - done:.0%} of the encoding run | {rest['wall']:.0f} s | "
        f"{expected:.0f} s ± 10 % | {rest['wall'] / expected:.2f} |"
    )
    print(
        f"| the same in CPU s | {rest['cpu']:.0f} s | {expected_cpu:.0f} s ± 10 % "
        f"| {rest['cpu'] / expected_cpu:.2f} |"
    )
    print(f"| rerun's shards identical to the uninterrupted run's | {same} | True | |")
    print(
        f"\nkilled run: {killed['wall']:.0f} s; the first run's encoding pass alone: "
        f"{t_ours:.0f} s; ceiling of the main thread on any number of cores: "
        f"{text_mb / route_cpu:.1f} MB/s; encoding on {cores} cores at most "
        f"{cores * text_mb / encode_cpu:.1f} MB/s, on 16 cores {16 * text_mb / encode_cpu:.1f} MB/s"
    )


if __name__ == "__main__":
    main()
