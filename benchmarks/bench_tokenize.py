"""Corpus to shards: BPE training and end-to-end encoding against peers measured in this run.

    python benchmarks/bench_tokenize.py            # 20 MB slice of ../shared/data, ~1-2 minutes
    python benchmarks/bench_tokenize.py --gb 1     # + peak RSS of `gptcli tokenize` on 1 GB of
                                                   #   builtin:stories (heavy: several minutes)
    python benchmarks/bench_tokenize.py --mb 0 --parquet-mb 500
                                                   # a Parquet corpus of 500 MB of stories
                                                   #   (zstd row groups, as FineWeb's; made once
                                                   #   into the cache folder): end to end and
                                                   #   reading alone (heavy: several minutes)

Rounds are interleaved (ours, peer, ours, peer, ...) and the best of each is kept, so a
shared, noisy machine affects both sides alike. The tiktoken peer is an Encoding with the
same trained vocabulary (GPT-2's own file cannot be downloaded offline); ratios > 1 mean
gptcli is faster.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gptcli import console, recipe, stories, tokenizer  # noqa: E402
from gptcli.data import split, tokenize  # noqa: E402
from gptcli.data.manifest import read_manifest  # noqa: E402
from gptcli.files import cache_dir  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
EOT = tokenizer.EOT


def make_corpus(folder: Path, mb: float) -> list[Path]:
    """The shared files, repeated until the slice holds mb megabytes, as .txt files."""
    files = sorted(p for p in SHARED.rglob("*") if p.is_file() and p.suffix in (".txt", ".jsonl"))
    blobs = [p.read_bytes() for p in files]
    out, total, i = [], 0, 0
    while total < mb * 1e6:
        blob = blobs[i % len(blobs)]
        path = folder / f"{i:03d}-{files[i % len(files)].stem}.txt"
        path.write_bytes(blob)
        out.append(path)
        total += len(blob)
        i += 1
    return out


def best(fn, rounds: int) -> float:
    return min(_timed(fn) for _ in range(rounds))


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--gb", type=float, default=0.0, help="also measure RSS on N GB of stories")
    ap.add_argument("--parquet-mb", type=float, default=0.0, help="the Parquet case, N MB of text")
    args = ap.parse_args()
    console.set_quiet(True)
    if args.parquet_mb:
        parquet_case(args)
    if args.mb:
        text_case(args)


def text_case(args) -> None:
    """Text files: BPE training and end-to-end encoding against tokenizers and tiktoken."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    work = Path(tempfile.mkdtemp(prefix="bench-tokenize-"))
    try:
        corpus = work / "corpus"
        corpus.mkdir()
        files = make_corpus(corpus, args.mb)

        # ---- a real `gptcli tokenize` process: wall time and peak RSS, measured first, while
        # this process is still small (a child's maxrss counts the parent's pages until exec)
        recipe_file = work / "r.yaml"
        recipe_file.write_text(
            f"name: cli\ndata:\n  source: {corpus}\ntokenizer:\n  vocab_size: {args.vocab}\n"
        )
        rss, wall = cli_run(recipe_file, work)
        if args.gb:
            big = work / "big.yaml"
            big.write_text(
                f"name: big\ndata:\n  source: builtin:stories\n  builtin_mb: {args.gb * 1000}\n"
                f"tokenizer:\n  vocab_size: {args.vocab}\n"
            )
            big_rss, big_wall = cli_run(big, work)
        n_bytes = sum(f.stat().st_size for f in files)
        mb = n_bytes / 1e6
        r = recipe.from_dict(
            {"data": {"source": str(corpus)}, "tokenizer": {"vocab_size": args.vocab}}
        )
        run = work / "run"
        (run / "data").mkdir(parents=True)

        # ---- BPE training: gptcli's streaming pass vs tokenizers on the same files
        def ours_train():
            tail = split.tail_split_chars(r.data, r.seed, run)
            tokenize.train_tokenizer(r, run, tail, n_bytes)

        def peer_train():
            tok = Tokenizer(models.BPE())
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tok.decoder = decoders.ByteLevel()
            trainer = trainers.BpeTrainer(
                vocab_size=args.vocab,
                min_frequency=2,
                special_tokens=[EOT],
                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                show_progress=False,
            )
            tok.train([str(f) for f in files], trainer)

        t_ours_train = t_peer_train = float("inf")
        for _ in range(max(1, args.rounds - 1)):
            t_ours_train = min(t_ours_train, _timed(ours_train))
            t_peer_train = min(t_peer_train, _timed(peer_train))

        # ---- encoding: the whole prepare() (read, split, encode, write) vs bare encoders
        tokenize.prepare(r, run)  # trains the tokenizer once; later runs reuse it
        tok = tokenizer.load(run)
        enc = tokenizer.Encoder(tok)
        texts = [d for f in files for d in f.read_text(encoding="utf-8").split(EOT) if d.strip()]

        def ours_encode():
            (run / "data" / "train.bin").unlink()
            tokenize.prepare(r, run)

        t_ours = t_tt = t_hf = float("inf")
        for _ in range(args.rounds):
            t_ours = min(t_ours, _timed(ours_encode))
            t_tt = min(t_tt, _timed(lambda: enc.tiktoken.encode_ordinary_batch(texts)))
            t_hf = min(t_hf, _timed(lambda: tok.encode_batch(texts, add_special_tokens=False)))

        print(
            f"corpus: {mb:.1f} MB ({len(files)} files, {len(texts):,} documents), "
            f"vocab {args.vocab}, {os.cpu_count()} cores, encoder {enc.name}"
        )
        print()
        print("| measure | gptcli | peer | ratio (peer time / gptcli time) |")
        print("| --- | ---: | ---: | ---: |")
        print(
            f"| BPE training (s), peer: tokenizers.train on the files | {t_ours_train:.2f} "
            f"| {t_peer_train:.2f} | {t_peer_train / t_ours_train:.2f} |"
        )
        print(
            f"| encode MB/s, gptcli end to end vs tiktoken encode_ordinary_batch | "
            f"{mb / t_ours:.1f} | {mb / t_tt:.1f} | {t_tt / t_ours:.2f} |"
        )
        print(
            f"| encode MB/s, gptcli end to end vs tokenizers encode_batch | "
            f"{mb / t_ours:.1f} | {mb / t_hf:.1f} | {t_hf / t_ours:.2f} |"
        )
        print(
            f"| `gptcli tokenize` process: wall s (train + encode), peak RSS MB | "
            f"{wall:.1f} s | {rss:.0f} MB | |"
        )
        if args.gb:
            print(
                f"| `gptcli tokenize` on {args.gb:g} GB builtin:stories: wall s, peak RSS MB | "
                f"{big_wall:.0f} s | {big_rss:.0f} MB | |"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


ROW_GROUP = 20_000  # rows per Parquet row group (FineWeb's files hold a few thousand to 100k)


def make_parquet(mb: float) -> Path:
    """mb megabytes of builtin:stories as one Parquet file with zstd row groups, made once in
    the cache folder (never in the repository)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = cache_dir() / "bench" / f"stories-{mb:g}mb.parquet"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    schema = pa.schema([("id", pa.int64()), ("text", pa.string())])
    rows, total, n = [], 0, 0
    with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for story in stories.iter_stories(0):
            rows.append(story)
            total += len(story.encode())
            if len(rows) == ROW_GROUP or total >= mb * 1e6:
                ids = list(range(n, n + len(rows)))
                writer.write_table(pa.table({"id": ids, "text": rows}, schema=schema))
                n, rows = n + len(rows), []
            if total >= mb * 1e6:
                break
    tmp.replace(path)
    return path


def parquet_case(args) -> None:
    """A Parquet corpus: `gptcli tokenize` end to end (wall, peak RSS, BPE included), its
    encoding against tiktoken on the same texts, and reading alone against bare pyarrow."""
    import pyarrow.parquet as pq

    from gptcli.data import columnar
    from gptcli.data.streams import Reading

    t0 = time.perf_counter()
    path = make_parquet(args.parquet_mb)
    made = time.perf_counter() - t0
    work = Path(tempfile.mkdtemp(prefix="bench-parquet-"))
    try:
        recipe_file = work / "pq.yaml"
        recipe_file.write_text(
            f"name: pq\ndata:\n  source: {path}\ntokenizer:\n  vocab_size: {args.vocab}\n"
        )
        rss, wall = cli_run(recipe_file, work)  # one process: reading, BPE and encoding
        r = recipe.load(recipe_file)
        run = work / "runs" / "pq"
        manifest = read_manifest(run)
        mb = (manifest["train"]["bytes"] + manifest["val"]["bytes"]) / 1e6
        enc = tokenizer.Encoder(tokenizer.load(run))

        def ours_encode():  # the tokenizer trained above is reused: read, split, encode, write
            (run / "data" / "train.bin").unlink()
            tokenize.prepare(r, run)

        def peer_encode():  # the same texts, a row group at a time
            for batch in pq.ParquetFile(path).iter_batches(batch_size=ROW_GROUP, columns=["text"]):
                enc.tiktoken.encode_ordinary_batch(batch.column(0).to_pylist())

        def ours_read():
            return sum(1 for _ in columnar.documents(path, Reading()))

        def bare_read():
            n = 0
            for batch in pq.ParquetFile(path).iter_batches(columns=["text"]):
                n += len(batch.column(0).to_pylist())
            return n

        rows = bare_read()
        t_ours = t_tt = t_read = t_bare = float("inf")
        for _ in range(args.rounds):
            t_ours = min(t_ours, _timed(ours_encode))
            t_tt = min(t_tt, _timed(peer_encode))
            t_read = min(t_read, _timed(ours_read))
            t_bare = min(t_bare, _timed(bare_read))
        print(
            f"parquet corpus: {mb:.0f} MB of text in {rows:,} rows, {path.stat().st_size / 1e6:.0f}"
            f" MB on disk (zstd, {ROW_GROUP:,}-row groups; made in {made:.0f} s or cached), "
            f"vocab {args.vocab}, {os.cpu_count()} cores, encoder {enc.name}, "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        print()
        print("| measure | gptcli | peer | ratio (peer time / gptcli time) |")
        print("| --- | ---: | ---: | ---: |")
        print(
            f"| encode MB/s, gptcli end to end vs tiktoken encode_ordinary_batch | "
            f"{mb / t_ours:.1f} | {mb / t_tt:.1f} | {t_tt / t_ours:.2f} |"
        )
        print(
            f"| reading rows/s, gptcli Parquet source vs bare ParquetFile.iter_batches | "
            f"{rows / t_read:,.0f} | {rows / t_bare:,.0f} | {t_bare / t_read:.2f} |"
        )
        print(
            f"| `gptcli tokenize` process (BPE on its train_bytes sample + encode): wall s, "
            f"peak RSS MB | {wall:.0f} s | {rss:.0f} MB | |"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def cli_run(recipe_file: Path, cwd: Path) -> tuple[float, float]:
    """Wall time and peak RSS (MB) of one `gptcli tokenize` child process.

    os.wait4 gives that child's own rusage; RUSAGE_CHILDREN would report the largest of every
    child waited for so far.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gptcli", "tokenize", str(recipe_file), "--quiet"],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(stderr.decode(errors="replace"))
    return usage.ru_maxrss / 1024, wall


if __name__ == "__main__":
    main()
