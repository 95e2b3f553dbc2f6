"""Corpus sources, the train/val split, token shards on disk and training batches.

One module per source kind (text, jsonl, delimited, columnar, url, stdin, builtin, hub), chosen by
registry; corpus reads any source through them, split routes documents, tokenize writes the
shards, batches serves them. The names below are loaded on first use, so a command that only
asks the registry what a source is does not pay for numpy and the tokenizer.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "Source": "corpus",
    "sources": "corpus",
    "source_files": "corpus",
    "dev_source": "corpus",
    "iter_documents": "corpus",
    "records": "corpus",
    "corpus_bytes": "corpus",
    "fingerprint": "corpus",
    "same_corpus": "corpus",
    "fetch": "url",
    "spool_stdin": "stdin",
    "Splitter": "split",
    "tail_split_chars": "split",
    "routed": "split",
    "safe_pieces": "shards",
    "unigram_bits_from_counts": "shards",
    "ShardWriter": "shards",
    "load_shard": "shards",
    "read_manifest": "manifest",
    "write_manifest": "manifest",
    "MANIFEST_VERSION": "manifest",
    "prepare": "tokenize",
    "is_up_to_date": "tokenize",
    "train_tokenizer": "tokenize",
    "describe_source": "tokenize",
    "Batches": "batches",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'gptcli.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"gptcli.data.{_WHERE[name]}"), name)
