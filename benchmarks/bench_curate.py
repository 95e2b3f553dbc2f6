"""Near-duplicate removal (`data.dedup: near`): accuracy against brute-force Jaccard, what it adds
to a whole `gptcli tokenize`, and datatrove's MinHash pipeline and datasketch's LSH as peers.

    python benchmarks/bench_curate.py            # a 100 MB corpus: needs a quiet machine, long
    python benchmarks/bench_curate.py --small    # an 8 MB corpus, a few minutes (a smoke run)
    python benchmarks/bench_curate.py --mb 300 --keep /data/bench-curate   # keep the corpus

The corpus is built in a temporary folder (never in the repository) from ../shared/data's text:
unique documents are seeded draws of 5 to 60 sentences from every sentence there (TinyStories,
Shakespeare, AG News, GSM8K, SST-2, RTE), then copies are planted at random later places:
exact ones (case and whitespace changed) and near ones of three kinds: words edited (1 to 15 %
replaced or dropped), sentences reordered (two adjacent pairs swapped) and boilerplate added
(20 to 60 words of navigation text before or after). Edits past a few percent and long
boilerplate on a short document fall below the threshold on purpose: they test precision.

Truth: the word-5-gram Jaccard similarity (words: lower-cased runs of letters and digits),
computed exactly, by brute force, between each document of a seeded sample and every earlier
document (through an index of the sample's 5-grams). A sampled document is a true duplicate
when an earlier one reaches the threshold; precision and recall are over the sample.

Measured (each prints its ratio to the peer measured in the same run):
- gptcli's curation pass alone (read, exact + near dedup) in MB/s, against datatrove's MinHash
  pipeline (signatures, buckets, clusters, filter; 5-gram shingles, 9 buckets of 10 hashes so
  (1/9)^(1/10) = 0.80; its own processes on every core; words split on whitespace after its
  own text normalisation, since its English tokenizer needs spaCy) and datasketch's MinHashLSH
  (threshold 0.8, 128 permutations, one process), each on the same JSONL files;
- precision and recall of each on the sample (targets for gptcli: >= 0.95 both; recall within
  2 points of datatrove's);
- the whole tokenize pass (BPE included) with data.dedup: near against none (target: <= 30 %
  more time).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gptcli import console, recipe  # noqa: E402
from gptcli.data import corpus, curate, dedup, shingles, tokenize  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
EOT = "<|endoftext|>"
SENTENCE = re.compile(r"(?<=[.!?])\s+")
THRESHOLD = 0.8
FILE_MB = 16  # the corpus is JSON lines files of about this size
BOILERPLATE = (
    "Home About Contact Privacy Policy Terms of Use Cookie Settings Subscribe to our "
    "newsletter Share this page on Facebook Twitter LinkedIn Email Print Related articles "
    "Most popular Read more Skip to main content Sign in Register Follow us All rights "
    "reserved Advertisement Continue reading below Accept all cookies Manage preferences"
).split()


# --------------------------------------------------------------------------- the corpus


def sentence_pool() -> list[str]:
    """Every sentence of ../shared/data's text files and JSON lines' string fields."""
    pieces: list[str] = []
    for path in sorted(SHARED.rglob("*")):
        if path.suffix == ".txt":
            text = path.read_text(encoding="utf-8")
            parts = text.split(EOT) if EOT in text else text.split("\n\n")
            pieces.extend(p.replace("\n", " ") for p in parts)
        elif path.suffix == ".jsonl":
            for line in path.read_text(encoding="utf-8").split("\n"):
                if not line.strip():
                    continue
                record = json.loads(line)
                pieces.extend(v for v in record.values() if isinstance(v, str) and len(v) > 20)
    pool = [s.strip() for p in pieces for s in SENTENCE.split(p) if len(s.split()) >= 4]
    return sorted(set(pool))


def near_copy(doc: str, rng: random.Random) -> tuple[str, str]:
    """A near copy of doc and how it was made."""
    kind = rng.choice(("edit", "reorder", "boilerplate"))
    if kind == "edit":
        words = doc.split()
        rate = rng.uniform(0.01, 0.15)
        out = []
        for w in words:
            r = rng.random()
            if r < rate / 2:
                continue  # dropped
            out.append(rng.choice(BOILERPLATE).lower() if r < rate else w)
        return " ".join(out), kind
    if kind == "reorder":
        sents = SENTENCE.split(doc)
        for _ in range(2):
            if len(sents) > 2:
                i = rng.randrange(len(sents) - 1)
                sents[i], sents[i + 1] = sents[i + 1], sents[i]
        return " ".join(sents), kind
    extra = " ".join(rng.choice(BOILERPLATE) for _ in range(rng.randint(20, 60)))
    return (extra + "\n" + doc if rng.random() < 0.5 else doc + "\n" + extra), kind


def build_corpus(folder: Path, mb: float, seed: int) -> tuple[list[str], dict[str, int]]:
    """Write the corpus as JSON lines files; its documents in order, and the planted counts."""
    rng = random.Random(seed)
    pool = sentence_pool()
    docs: list[str] = []
    planted = {"exact": 0, "edit": 0, "reorder": 0, "boilerplate": 0}
    size = 0
    while size < mb * 1e6:
        roll = rng.random()
        if docs and roll < 0.08:
            src = docs[rng.randrange(len(docs))]
            doc = "  ".join(src.upper().split()) if rng.random() < 0.5 else src + "\n"
            planted["exact"] += 1
        elif docs and roll < 0.20:
            doc, kind = near_copy(docs[rng.randrange(len(docs))], rng)
            planted[kind] += 1
        else:
            doc = " ".join(rng.choice(pool) for _ in range(rng.randint(5, 60)))
        docs.append(doc)
        size += len(doc.encode("utf-8"))
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"id": str(i), "text": doc}) + "\n" for i, doc in enumerate(docs)]
    part, start, size = 0, 0, 0
    for i, line in enumerate(lines):
        size += len(line)
        if size >= FILE_MB * 1e6 or i == len(lines) - 1:
            name = folder / f"part-{part:03d}.jsonl"
            name.write_text("".join(lines[start : i + 1]), encoding="utf-8")
            part, start, size = part + 1, i + 1, 0
    return docs, planted


# --------------------------------------------------------------------------- brute-force truth


def grams_of(docs: list[str]) -> list[np.ndarray]:
    """Each document's distinct word-5-gram hashes (shingles' definition, no MinHash)."""
    out: list[np.ndarray] = []
    for start in range(0, len(docs), 2048):
        g = shingles.ngrams(shingles.words(docs[start : start + 2048]), dedup.SHINGLE)
        out.extend(np.unique(g.of(i)) for i in range(len(g.starts) - 1))
    return out


def truth(docs: list[str], sample: list[int], threshold: float) -> dict[int, float]:
    """For each sampled document: the highest exact Jaccard with any earlier document."""
    grams = grams_of(docs)
    keys = np.concatenate([grams[s] for s in sample])
    owner = np.concatenate([np.full(len(grams[s]), j) for j, s in enumerate(sample)])
    order = np.argsort(keys, kind="stable")
    keys, owner = keys[order], owner[order]
    sizes = np.array([len(grams[s]) for s in sample])
    best = {s: 0.0 for s in sample}
    numbers = np.array(sample)
    for d, g in enumerate(grams):
        if not len(g):
            continue
        lo, hi = np.searchsorted(keys, g, "left"), np.searchsorted(keys, g, "right")
        n = hi - lo
        if not n.any():
            continue
        pos = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n) + np.repeat(lo, n)
        who, inter = np.unique(owner[pos], return_counts=True)
        later = numbers[who] > d  # only earlier documents count
        who, inter = who[later], inter[later]
        jac = inter / (sizes[who] + len(g) - inter)
        for j, value in zip(who.tolist(), jac.tolist(), strict=True):
            if value > best[sample[j]]:
                best[sample[j]] = value
    return best


def scores(removed: set[int], best: dict[int, float], threshold: float) -> tuple[float, float]:
    positives = {s for s, j in best.items() if j >= threshold}
    flagged = {s for s in best if s in removed}
    hits = len(positives & flagged)
    precision = hits / len(flagged) if flagged else 1.0
    recall = hits / len(positives) if positives else 1.0
    return precision, recall


# --------------------------------------------------------------------------- the three dedups


def gptcli_pass(folder: Path, work: Path) -> tuple[set[int], float]:
    """gptcli's curation alone over the files (read + exact + near): removed numbers, seconds."""
    cfg = recipe.from_dict({"data": {"source": str(folder), "dedup": "near"}}).data
    t0 = time.perf_counter()
    curator = curate.Curator(cfg, work / "gptcli-state")
    items = corpus.iter_documents(cfg, 0)
    for _ in curator.curated(items, lambda p: p[1], lambda p: "corpus"):
        pass
    elapsed = time.perf_counter() - t0
    curator.close()
    return set(curator.drop_docs), elapsed


def datatrove_pass(folder: Path, work: Path) -> tuple[set[int], float]:
    """datatrove's MinHash pipeline over the same files: removed ids, seconds."""
    import xxhash
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashes import xxhash as dt_xxhash
    from datatrove.utils.hashing import HashConfig
    from datatrove.utils.word_tokenizers import WordTokenizer

    # datatrove hands xxhash a str, which xxhash 4 refuses: the same hash of its UTF-8 bytes
    dt_xxhash.xxhash64 = lambda s: xxhash.xxh64_intdigest(s.encode() if isinstance(s, str) else s)

    class Whitespace(WordTokenizer):  # its English tokenizer needs spaCy
        def word_tokenize(self, text: str) -> list[str]:
            return text.split()

        def sent_tokenize(self, text: str) -> list[str]:
            return [text]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [(0, len(text))]

    cfg = MinhashConfig(n_grams=5, num_buckets=9, hashes_per_bucket=10, hash_config=HashConfig())
    base = work / "datatrove"
    files = len(list(folder.glob("*.jsonl")))
    cores = os.cpu_count() or 1

    def reader():
        return JsonlReader(str(folder), glob_pattern="*.jsonl", id_key="id")

    stages = [
        (
            [
                reader(),
                MinhashDedupSignature(str(base / "sigs"), config=cfg, language=Whitespace()),
            ],
            files,
        ),
        ([MinhashDedupBuckets(str(base / "sigs"), str(base / "buckets"), config=cfg)], 9),
        ([MinhashDedupCluster(str(base / "buckets"), str(base / "remove"), config=cfg)], 1),
        (
            [
                reader(),
                MinhashDedupFilter(
                    str(base / "remove"),
                    exclusion_writer=JsonlWriter(str(base / "removed"), compression=None),
                ),
                JsonlWriter(str(base / "kept"), compression=None),
            ],
            files,
        ),
    ]
    t0 = time.perf_counter()
    for i, (pipeline, tasks) in enumerate(stages):
        LocalPipelineExecutor(
            pipeline=pipeline,
            tasks=tasks,
            workers=min(tasks, cores),
            logging_dir=str(base / f"logs-{i}"),
            skip_completed=False,
        ).run()
    elapsed = time.perf_counter() - t0
    removed = {
        int(json.loads(line)["id"])
        for f in glob.glob(str(base / "removed" / "*"))
        for line in open(f, encoding="utf-8")
    }
    return removed, elapsed


def datasketch_pass(docs: list[str]) -> tuple[set[int], float]:
    """datasketch's MinHashLSH, streaming (the first copy stays): removed numbers, seconds."""
    from datasketch import MinHash, MinHashLSH

    t0 = time.perf_counter()
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=128)
    removed = set()
    word = re.compile(r"[a-z0-9\x80-\U0010ffff]+")
    for i, doc in enumerate(docs):
        words = word.findall(doc.lower())
        grams = {" ".join(words[j : j + 5]).encode() for j in range(max(1, len(words) - 4))}
        m = MinHash(num_perm=128)
        m.update_batch(list(grams))
        if lsh.query(m):
            removed.add(i)
        else:
            lsh.insert(str(i), m)
    return removed, time.perf_counter() - t0


def tokenize_pass(folder: Path, work: Path, dedup_mode: str) -> float:
    """The whole `gptcli tokenize` (BPE included) on the corpus, fresh: seconds."""
    r = recipe.from_dict({"name": dedup_mode, "data": {"source": str(folder), "dedup": dedup_mode}})
    run = work / f"run-{dedup_mode}"
    shutil.rmtree(run, ignore_errors=True)
    t0 = time.perf_counter()
    tokenize.prepare(r, run)
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", action="store_true", help="an 8 MB corpus, a sample of 300")
    ap.add_argument("--mb", type=float, default=100.0, help="corpus size (default 100)")
    ap.add_argument("--sample", type=int, default=2000, help="documents checked by brute force")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--keep", type=Path, help="build the corpus here and keep it")
    ap.add_argument("--no-tokenize", action="store_true", help="skip the tokenize passes")
    ap.add_argument("--no-peers", action="store_true", help="skip datatrove and datasketch")
    args = ap.parse_args()
    if args.small:
        args.mb, args.sample = 8.0, 300
    console.set_quiet(True)
    work = Path(tempfile.mkdtemp(prefix="bench-curate-"))
    folder = args.keep or work / "corpus"
    try:
        t0 = time.perf_counter()
        docs, planted = build_corpus(folder, args.mb, args.seed)
        mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
        print(
            f"corpus: {mb:.1f} MB, {len(docs):,} documents ({planted}), built in "
            f"{time.perf_counter() - t0:.0f} s; {os.cpu_count()} cores; rensa "
            f"{dedup.near_version()}, bands x rows {dedup.bands_for(THRESHOLD)}"
        )
        rng = random.Random(args.seed + 1)
        sample = sorted(rng.sample(range(len(docs)), min(args.sample, len(docs))))
        t0 = time.perf_counter()
        best = truth(docs, sample, THRESHOLD)
        positives = sum(j >= THRESHOLD for j in best.values())
        print(
            f"truth: {len(sample):,} sampled documents, {positives} with an earlier one at "
            f"Jaccard >= {THRESHOLD} (brute force, {time.perf_counter() - t0:.0f} s)"
        )
        rows = []
        removed, secs = gptcli_pass(folder, work)
        rows.append(("gptcli (rensa, exact + near)", removed, secs))
        if not args.no_peers:
            removed, secs = datatrove_pass(folder, work)
            rows.append(("datatrove MinHash pipeline", removed, secs))
            removed, secs = datasketch_pass(docs)
            rows.append(("datasketch MinHashLSH", removed, secs))
        print()
        print("| dedup | removed | precision | recall | MB/s | gptcli MB/s / its MB/s |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        ours = mb / rows[0][2]
        for name, removed, secs in rows:
            p, r = scores(removed, best, THRESHOLD)
            print(
                f"| {name} | {len(removed):,} | {p:.3f} | {r:.3f} | {mb / secs:.2f} | "
                f"{ours / (mb / secs):.2f} |"
            )
        if not args.no_tokenize:
            off = tokenize_pass(folder, work, "none")
            on = tokenize_pass(folder, work, "near")
            print()
            print("| tokenize (BPE + shards) | seconds | MB/s |")
            print("| --- | ---: | ---: |")
            print(f"| data.dedup: none | {off:.1f} | {mb / off:.2f} |")
            print(f"| data.dedup: near | {on:.1f} | {mb / on:.2f} |")
            print(f"| near / none (target <= 1.30) | {on / off:.2f} | |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
