"""Parquet, Arrow, CSV and zstd sources through the real `gptcli tokenize`, `pretrain` and
`inspect`; their bad inputs exit 2 in one line and leave the run folder as it was."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from conftest import assert_one_line_error, gptcli, gptcli_without

from gptcli.files import sha256_file

STORIES = [f"Story {i}: the cat number {i} sat on mat {i % 7} and slept.\n" * 3 for i in range(60)]
TINY = """\
name: c
data:
  source: {source}
tokenizer:
  vocab_size: 300
model: {{n_layer: 1, n_head: 2, n_embd: 16, block_size: 16}}
train: {{batch_size: 2, max_steps: 2, warmup_steps: 1, eval_every: 2, eval_batches: 1,
  save_every: 0, log_every: 1}}
"""


def _recipe(folder: Path, source) -> Path:
    path = folder / "c.yaml"
    path.write_text(TINY.format(source=json.dumps(source)))
    return path


def _zst(path: Path, raw: bytes) -> Path:
    path.write_bytes(zstandard.ZstdCompressor().compress(raw))
    return path


def _write_all_kinds(d: Path) -> list:
    """One small file of each new kind; Parquet with a null and a blank row, in two row
    groups; Arrow as a file and as a stream; a struct column read by a dotted field."""
    half = len(STORIES) // 2
    texts = STORIES[:half] + [None, "  "]
    table = pa.table({"id": list(range(len(texts))), "text": texts})
    pq.write_table(table, d / "a.parquet", row_group_size=16, compression="zstd")
    nested = pa.table({"meta": [{"body": s} for s in STORIES[half:]]})
    with pa.OSFile(str(d / "b.arrow"), "wb") as sink, pa.ipc.new_file(sink, nested.schema) as w:
        w.write_table(nested)
    with pa.OSFile(str(d / "c.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    lines = "".join(json.dumps({"text": s}) + "\n" for s in STORIES[:10])
    _zst(d / "d.jsonl.zst", lines.encode())
    _zst(d / "e.txt.zst", "<|endoftext|>".join(STORIES[:10]).encode())
    (d / "f.csv").write_text("id,text\n" + "".join(f'{i},"{s}"\n' for i, s in enumerate(STORIES)))
    return [
        str(d / "a.parquet"),
        {"path": str(d / "b.arrow"), "text_field": "meta.body"},
        str(d / "c.arrow"),
        str(d / "d.jsonl.zst"),
        str(d / "e.txt.zst"),
        str(d / "f.csv"),
    ]


def test_each_new_kind_tokenizes_pretrains_and_is_inspected(tmp_path):
    recipe = _recipe(tmp_path, _write_all_kinds(tmp_path))
    proc = gptcli("tokenize", str(recipe), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    read = {Path(e["source"]).name: e for e in json.loads(proc.stdout)["sources"]}
    half = len(STORIES) // 2
    assert read["a.parquet"]["kind"] == "parquet"
    assert read["a.parquet"]["documents"] == half
    assert read["a.parquet"]["skipped"] == {"blank text": 1, "null text": 1}
    assert read["b.arrow"]["documents"] == len(STORIES) - half
    assert read["c.arrow"]["documents"] == half
    assert (read["d.jsonl.zst"]["kind"], read["d.jsonl.zst"]["documents"]) == ("jsonl (.zst)", 10)
    assert read["e.txt.zst"]["documents"] == 10 and read["f.csv"]["documents"] == len(STORIES)
    assert "1 null text" in proc.stderr  # the log counts the rows left out
    proc = gptcli("pretrain", str(recipe), "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "runs/c/checkpoints/step-0000002/model.safetensors").is_file()
    shown = gptcli("inspect", "runs/c", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "sources read" in shown.stdout and "1 null text" in shown.stdout


def _bad_inputs(d: Path) -> list[tuple[str, tuple[str, ...]]]:
    pq.write_table(pa.table({"text": ["a story"] * 200}), d / "good.parquet")
    corrupt = d / "corrupt.parquet"
    corrupt.write_bytes((d / "good.parquet").read_bytes()[:-40] + b"\0" * 40)
    full = zstandard.ZstdCompressor().compress(b"a story<|endoftext|>" * 5000)
    (d / "cut.txt.zst").write_bytes(full[: len(full) // 2])
    pq.write_table(pa.table({"content": ["x"], "lang": ["en"]}), d / "nocol.parquet")
    pq.write_table(pa.table({"text": [1, 2, 3]}), d / "ints.parquet")
    (d / "open.csv").write_text('id,text\n1,"a story"\n2,"an open quote\n3,swallowed\n')
    return [
        (str(d / "open.csv"), ("open.csv:3", "never closed")),
        (str(corrupt), ("corrupt.parquet", "not a readable Parquet file")),
        (str(d / "cut.txt.zst"), ("cut.txt.zst", "truncated")),
        (str(d / "nocol.parquet"), ("no column 'text'", "content, lang", "text_field")),
        (str(d / "ints.parquet"), ("ints.parquet", "column 'text' holds int64, not text")),
    ]


def test_bad_inputs_exit_2_in_one_line_and_damage_nothing(tmp_path):
    recipe = _recipe(tmp_path, str(tmp_path / "good.parquet"))
    cases = _bad_inputs(tmp_path)
    proc = gptcli("tokenize", str(recipe), "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    shards = tmp_path / "runs/c/data"
    before = {p.name: p.read_bytes() for p in shards.iterdir()}
    for source, needles in cases:
        _recipe(tmp_path, source)
        proc = gptcli("tokenize", str(recipe), "--quiet", cwd=tmp_path)
        assert_one_line_error(proc, *needles)
        assert {p.name: p.read_bytes() for p in shards.iterdir()} == before


def test_missing_pyarrow_names_the_install_line(tmp_path):
    pq.write_table(pa.table({"text": ["a story"] * 10}), tmp_path / "a.parquet")
    recipe = _recipe(tmp_path, str(tmp_path / "a.parquet"))
    proc = gptcli_without("pyarrow", "tokenize", str(recipe), "--quiet", cwd=tmp_path)
    assert_one_line_error(proc, "pip install 'gptcli[parquet]'")
    assert not (tmp_path / "runs/c/data/train.bin").exists()


@pytest.mark.parametrize("frames", [1, 3])
def test_zst_reads_every_frame_like_the_plain_file(tmp_path, frames):
    from gptcli import recipe
    from gptcli.data import corpus

    text = "<|endoftext|>".join(STORIES).encode()
    step = len(text) // frames + 1
    parts = [text[i : i + step] for i in range(0, len(text), step)]
    (tmp_path / "a.txt.zst").write_bytes(
        b"".join(zstandard.ZstdCompressor().compress(p) for p in parts)
    )
    (tmp_path / "a.txt").write_bytes(text)
    docs = {
        name: [
            d for _, d in corpus.iter_documents(recipe.DataConfig(source=str(tmp_path / name)), 0)
        ]
        for name in ("a.txt", "a.txt.zst")
    }
    assert docs["a.txt.zst"] == docs["a.txt"] and len(docs["a.txt"]) == len(STORIES)


def test_the_same_text_in_any_container_gives_the_same_tokenizer_and_shards(tmp_path):
    """The BPE's sample share and reach come from the text's size, which for a compressed file
    was its size on disk: another sample, another tokenizer. The text spans a read chunk
    (1 MiB) and the sample is a part of it; the .gz holds two members (its trailer states the
    last one's size only), the .zst a frame that does not state its size."""
    from gptcli import stories

    raw = stories.generate(1_100_000, 0).encode()
    half = len(raw) // 2
    containers = {
        "txt": raw,
        "txt.gz": gzip.compress(raw[:half]) + gzip.compress(raw[half:]),
        "txt.zst": zstandard.ZstdCompressor(write_content_size=False).compress(raw),
    }
    made = {}
    for suffix, content in containers.items():
        folder = tmp_path / suffix
        folder.mkdir()
        (folder / f"corpus.{suffix}").write_bytes(content)
        recipe = _recipe(folder, f"corpus.{suffix}")
        proc = gptcli(
            "tokenize", str(recipe), "--set", "tokenizer.train_bytes=300000", "--json", cwd=folder
        )
        assert proc.returncode == 0, proc.stderr
        run = folder / "runs" / "c"
        files = ("tokenizer.json", "data/train.bin", "data/val.bin")
        made[suffix] = {name: sha256_file(run / name) for name in files}
    assert made["txt.gz"] == made["txt"]
    assert made["txt.zst"] == made["txt"]


def test_a_directory_lists_every_known_kind(tmp_path):
    from gptcli.data import paths

    for name in ("a.parquet", "b.jsonl.zst", "c.txt", "d.csv", "notes.json", "x.py"):
        (tmp_path / name).write_text("")
    listed = [p.name for p in paths.source_files(str(tmp_path))]
    assert listed == ["a.parquet", "b.jsonl.zst", "c.txt", "d.csv"]
