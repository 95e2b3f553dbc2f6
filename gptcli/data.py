"""Corpus sources, the train/val split, token shards on disk and training batches.

A corpus is a list of documents. Shards are flat arrays of token ids with <|endoftext|> after
every document, memory-mapped at training time so a corpus never has to fit in RAM twice.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from gptcli import console, tokenizer
from gptcli.console import UserError
from gptcli.recipe import DataConfig, Recipe, TokenizerConfig

MANIFEST_VERSION = 1
TEXT_SUFFIXES = (".txt", ".md", ".jsonl")
MIN_DOCS_FOR_DOC_SPLIT = 100
MANIFEST_KEYS = {
    "format_version",
    "corpus",
    "tokenizer_settings",
    "tokenizer_sha256",
    "vocab_size",
    "dtype",
    "train",
    "val",
    "val_unigram_bpb",
    "elapsed_s",
}


# --------------------------------------------------------------------------- sources


def source_files(source: str) -> list[Path]:
    """A file, a directory (recursively) or a glob, as a sorted list of text files."""
    p = Path(source).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in TEXT_SUFFIXES)
    else:
        files = sorted(Path(f) for f in glob.glob(source, recursive=True) if Path(f).is_file())
    if not files:
        raise UserError(
            f"data.source {source!r}: no such file, or no .txt/.md/.jsonl files in it "
            "(pass a file, directory, glob or builtin:stories)"
        )
    return files


def fingerprint(cfg: DataConfig, seed: int) -> dict:
    """What the shards were made from: changes to any of it make them stale."""
    if cfg.source.startswith("builtin:"):
        from gptcli import stories

        generator = hashlib.sha256(Path(stories.__file__).read_bytes()).hexdigest()[:16]
        return {"source": cfg.source, "mb": cfg.builtin_mb, "seed": seed, "generator": generator}
    files = []
    for f in source_files(cfg.source):
        st = f.stat()
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        files.append({"path": str(f), "bytes": st.st_size, "sha256": digest})
    return {"source": cfg.source, "text_field": cfg.text_field, "files": files}


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path}: not UTF-8 at byte offset {e.start} (convert it to UTF-8)"
        ) from None


def _field(record: object, dotted: str) -> object:
    for part in dotted.split("."):
        if not isinstance(record, dict) or part not in record:
            return None
        record = record[part]
    return record


def split_text_documents(text: str) -> list[str]:
    return [d.strip() for d in text.split(tokenizer.EOT) if d.strip()]


def _jsonl_documents(path: Path, text_field: str) -> list[str]:
    docs = []
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        value = _field(record, text_field)
        if not isinstance(value, str):
            raise UserError(
                f"{path}:{lineno}: no string field {text_field!r} (set data.text_field)"
            )
        if value.strip():
            docs.append(value)
    return docs


def read_documents(cfg: DataConfig, seed: int) -> list[str]:
    if cfg.source.startswith("builtin:"):
        name = cfg.source.removeprefix("builtin:")
        if name != "stories":
            raise UserError(f"unknown builtin corpus {cfg.source!r} (available: builtin:stories)")
        from gptcli import stories

        return split_text_documents(stories.generate(int(cfg.builtin_mb * 1e6), seed))
    docs: list[str] = []
    for f in source_files(cfg.source):
        if f.suffix == ".jsonl":
            docs.extend(_jsonl_documents(f, cfg.text_field))
        else:
            docs.extend(split_text_documents(_read_text(f)))
    if not docs:
        raise UserError(f"data.source {cfg.source!r}: the corpus is empty")
    return docs


# --------------------------------------------------------------------------- split


@dataclass
class Piece:
    """A document, or the part of one, and whether <|endoftext|> follows it."""

    text: str
    ends_document: bool = True


def split(docs: list[str], val_fraction: float, seed: int) -> tuple[list[Piece], list[Piece]]:
    """Whole documents to val (chosen by seed); with fewer than 100, the tail of the text."""
    if len(docs) < MIN_DOCS_FOR_DOC_SPLIT:
        total = sum(len(d) for d in docs)
        cut = total - max(1, int(total * val_fraction))
        train: list[Piece] = []
        val: list[Piece] = []
        offset = 0
        for d in docs:
            if offset + len(d) <= cut:
                train.append(Piece(d))
            elif offset >= cut:
                val.append(Piece(d))
            else:
                train.append(Piece(d[: cut - offset], ends_document=False))
                val.append(Piece(d[cut - offset :]))
            offset += len(d)
        return train, val
    sizes = [len(d) for d in docs]
    target = val_fraction * sum(sizes)
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    val_ids, taken = set(), 0
    for i in order:
        if taken >= target:
            break
        val_ids.add(i)
        taken += sizes[i]
    train = [Piece(d) for i, d in enumerate(docs) if i not in val_ids]
    val = [Piece(d) for i, d in enumerate(docs) if i in val_ids]
    return train, val


# --------------------------------------------------------------------------- shards


def shard_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def encode_pieces(tok: Tokenizer, pieces: list[Piece], chunk: int = 1024) -> np.ndarray:
    eot = tokenizer.eot_id(tok)
    dtype = shard_dtype(tok.get_vocab_size())
    parts = []
    for start in range(0, len(pieces), chunk):
        batch = pieces[start : start + chunk]
        for piece, ids in zip(
            batch, tokenizer.encode_batch(tok, [p.text for p in batch]), strict=True
        ):
            if piece.ends_document:
                ids.append(eot)
            parts.append(np.asarray(ids, dtype=dtype))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def write_atomic(path: Path, data: bytes) -> None:
    """Temp file, fsync, rename: a crash leaves the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def unigram_bits_per_byte(ids: np.ndarray, n_bytes: int) -> float:
    """Entropy of the token frequencies themselves: what a model that ignores context gets."""
    counts = np.bincount(ids.astype(np.int64))
    p = counts[counts > 0] / len(ids)
    bits_per_token = float(-(p * np.log2(p)).sum())
    return bits_per_token * len(ids) / max(n_bytes, 1)


def _tokenizer_settings(cfg: TokenizerConfig) -> dict:
    return {
        "vocab_size": cfg.vocab_size,
        "special_tokens": cfg.special_tokens,
        "min_frequency": cfg.min_frequency,
    }


def read_manifest(run_dir: Path) -> dict | None:
    path = run_dir / "data" / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{path}: not valid JSON (delete it to rebuild the shards)") from None
    version = manifest.get("format_version", 0)
    if version > MANIFEST_VERSION:
        raise UserError(
            f"{path}: format_version {version} is newer than this gptcli reads "
            f"({MANIFEST_VERSION}); upgrade gptcli"
        )
    unknown = sorted(set(manifest) - MANIFEST_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown key {unknown[0]!r} (written by a newer gptcli?)")
    return manifest


def _tokenizer_key(recipe: Recipe, given_tokenizer: Path | None) -> dict:
    if given_tokenizer is not None:
        return {"from": tokenizer.file_hash(given_tokenizer)}
    return _tokenizer_settings(recipe.tokenizer)


def is_up_to_date(recipe: Recipe, run_dir: Path, given_tokenizer: Path | None = None) -> bool:
    """True when the run's shards were made from this corpus with these tokenizer settings."""
    manifest = read_manifest(run_dir)
    if not manifest:
        return False
    tok_path = run_dir / tokenizer.TOKENIZER_FILE
    if manifest.get("corpus") != fingerprint(recipe.data, recipe.seed):
        return False
    if manifest.get("tokenizer_settings") != _tokenizer_key(recipe, given_tokenizer):
        return False
    if not tok_path.is_file() or tokenizer.file_hash(tok_path) != manifest.get("tokenizer_sha256"):
        return False
    itemsize = np.dtype(manifest["dtype"]).itemsize
    for name in ("train", "val"):
        shard = run_dir / "data" / f"{name}.bin"
        if not shard.is_file() or shard.stat().st_size != manifest[name]["tokens"] * itemsize:
            return False
    return True


def prepare(recipe: Recipe, run_dir: Path, given_tokenizer: Path | None = None) -> dict:
    """Train the tokenizer (unless given or already trained on this corpus) and write shards.

    Returns the manifest. Skips all work when the manifest says the shards are up to date.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "data").mkdir(exist_ok=True)
    tok_path = run_dir / tokenizer.TOKENIZER_FILE
    if is_up_to_date(recipe, run_dir, given_tokenizer):
        console.info(f"tokenize: shards in {run_dir / 'data'} are up to date")
        return read_manifest(run_dir)
    fp = fingerprint(recipe.data, recipe.seed)
    settings = _tokenizer_key(recipe, given_tokenizer)
    manifest = read_manifest(run_dir)
    started = time.perf_counter()
    console.info(f"tokenize: reading {recipe.data.source}")
    docs = read_documents(recipe.data, recipe.seed)
    train_pieces, val_pieces = split(docs, recipe.data.val_fraction, recipe.seed)
    if recipe.data.dev:
        dev = DataConfig(source=recipe.data.dev, text_field=recipe.data.text_field)
        train_pieces = [Piece(d) for d in docs]
        val_pieces = [Piece(d) for d in read_documents(dev, recipe.seed)]

    if given_tokenizer is not None:
        tok = tokenizer.load(given_tokenizer)
        tokenizer.save(tok, tok_path)
    elif (
        manifest
        and manifest.get("corpus") == fp
        and manifest.get("tokenizer_settings") == settings
        and tok_path.is_file()
    ):
        tok = tokenizer.load(tok_path)
        console.info("tokenize: reusing the tokenizer trained on this corpus")
    else:
        console.info(f"tokenize: training a {recipe.tokenizer.vocab_size}-token byte-level BPE")
        t0 = time.perf_counter()
        tok = tokenizer.train(
            (p.text for p in train_pieces),
            recipe.tokenizer.vocab_size,
            recipe.tokenizer.special_tokens,
            recipe.tokenizer.min_frequency,
        )
        tokenizer.save(tok, tok_path)
        console.info(f"tokenize: BPE trained in {time.perf_counter() - t0:.1f}s")

    splits = {}
    dtype = shard_dtype(tok.get_vocab_size())
    val_ids = None
    with console.progress() as bar:
        task = bar.add_task("encode", total=len(train_pieces) + len(val_pieces))
        for name, pieces in (("train", train_pieces), ("val", val_pieces)):
            ids = encode_pieces(tok, pieces)
            bar.advance(task, len(pieces))
            n_bytes = sum(len(p.text.encode("utf-8")) for p in pieces)
            write_atomic(run_dir / "data" / f"{name}.bin", ids.tobytes())
            splits[name] = {
                "documents": sum(p.ends_document for p in pieces),
                "bytes": n_bytes,
                "tokens": int(len(ids)),
            }
            if name == "val":
                val_ids = ids
    manifest = {
        "format_version": MANIFEST_VERSION,
        "corpus": fp,
        "tokenizer_settings": settings,
        "tokenizer_sha256": tokenizer.file_hash(tok_path),
        "vocab_size": tok.get_vocab_size(),
        "dtype": dtype.name,
        "train": splits["train"],
        "val": splits["val"],
        "val_unigram_bpb": unigram_bits_per_byte(val_ids, splits["val"]["bytes"]),
        "elapsed_s": round(time.perf_counter() - started, 3),
    }
    write_atomic(run_dir / "data" / "manifest.json", json.dumps(manifest, indent=2).encode())
    t, v = splits["train"], splits["val"]
    console.info(
        f"tokenize: {t['documents'] + v['documents']} documents, "
        f"train {t['tokens']:,} tokens / val {v['tokens']:,} tokens, "
        f"{(t['bytes'] + v['bytes']) / max(t['tokens'] + v['tokens'], 1):.2f} bytes per token, "
        f"{manifest['elapsed_s']:.1f}s"
    )
    return manifest


def load_shard(run_dir: Path, split_name: str, manifest: dict) -> np.ndarray:
    path = run_dir / "data" / f"{split_name}.bin"
    return np.memmap(path, dtype=np.dtype(manifest["dtype"]), mode="r")


# --------------------------------------------------------------------------- batches


class Batches:
    """Random windows of block_size + 1 tokens, chosen by (seed, step) alone.

    Because a batch depends only on its index, a resumed run sees exactly the batches the
    uninterrupted run would have seen, with no sampler state to save.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int) -> None:
        if len(tokens) <= block_size + 1:
            raise UserError(
                f"the training split has {len(tokens)} tokens, fewer than block_size + 2 "
                f"({block_size + 2}); use more text or a smaller model.block_size"
            )
        self.tokens = tokens
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed

    def get(self, index: int) -> tuple:
        import torch

        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        starts = torch.randint(
            len(self.tokens) - self.block_size - 1, (self.batch_size,), generator=g
        )
        return self._windows(starts.tolist())

    def _windows(self, starts: list[int]) -> tuple:
        import torch

        rows = np.stack([self.tokens[s : s + self.block_size + 1] for s in starts]).astype(np.int64)
        data = torch.from_numpy(rows)
        return data[:, :-1], data[:, 1:]

    def eval_batches(self, n_batches: int) -> list[tuple]:
        """Fixed, evenly spaced windows, so every evaluation measures the same tokens."""
        span = max(len(self.tokens) - self.block_size - 1, 1)
        n = min(n_batches * self.batch_size, max(1, span // self.block_size))
        starts = [math.floor(i * span / n) for i in range(n)]
        return [
            self._windows(starts[i : i + self.batch_size])
            for i in range(0, len(starts), self.batch_size)
        ]


def tokenize_run(recipe: Recipe) -> tuple[Path, dict]:
    """`gptcli tokenize RECIPE`: prepare the run folder's shards, under the run lock.

    Shards under existing checkpoints are not rebuilt: the checkpoints were trained on them.
    """
    from gptcli import checkpoint
    from gptcli import recipe as recipe_mod

    run_dir = recipe_mod.run_dir(recipe)
    with checkpoint.RunLock(run_dir):
        if checkpoint.newest_in_run(run_dir) and not is_up_to_date(recipe, run_dir):
            raise UserError(
                f"{run_dir} has checkpoints trained on other data or tokenizer settings; "
                "set another name: (or run_dir:) for the new data"
            )
        manifest = prepare(recipe, run_dir)
        write_atomic(run_dir / "recipe.yaml", recipe_mod.dump(recipe).encode())
    return run_dir, manifest
