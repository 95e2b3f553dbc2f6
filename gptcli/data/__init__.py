"""Corpus sources, the train/val split, token shards on disk and training batches.

One module per source kind (builtin, hub for hf:, url, stdin, paths), chosen by registry.KINDS,
and one reader module per file format (text, jsonl, delimited, columnar), chosen by
registry.FORMATS; corpus reads any source through them, split routes documents, tokenize
writes the shards, batches serves them. Callers import the submodule they use, so a command
that only asks the registry what a source is does not pay for numpy and the tokenizer.
"""
