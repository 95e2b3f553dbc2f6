"""An interrupted `gptcli tokenize` continues where it stopped; data.max_tokens takes a sample."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import SHARED_DATA, gptcli, run_env

from gptcli import recipe
from gptcli.data import tokenize

RECIPE = "name: c\ntokenizer:\n  vocab_size: 300\ndata:\n  source: corpus.jsonl\n"

# gptcli with small chunks (a progress record every 50k characters) that sends itself a
# signal right after its Nth progress record: a kill at a known point, without sleeping
STOP_AFTER_RECORD = textwrap.dedent(
    """\
    import os, runpy, sys
    from gptcli.data import tokenize

    stop_at, sig = int(sys.argv.pop(1)), int(sys.argv.pop(1))
    tokenize.CHUNK_CHARS, tokenize.SYNC_CHARS = 50_000, 10_000
    save, calls = tokenize.save_progress, []

    def saving(run_dir, record):
        save(run_dir, record)
        calls.append(record["items"])
        if len(calls) == stop_at:
            os.kill(os.getpid(), sig)

    tokenize.save_progress = saving
    runpy.run_module("gptcli", run_name="__main__")
    """
)


# the same, killed (-9) in the middle of a chunk instead: after the Nth record, once the next
# chunk's shard bytes are written and before its progress record, so the partial files hold
# more than the last record says and the rerun must cut them back
KILL_MID_WRITE = textwrap.dedent(
    """\
    import os, runpy, signal, sys
    from gptcli.data import shards, tokenize

    stop_at = int(sys.argv.pop(1))
    tokenize.CHUNK_CHARS, tokenize.SYNC_CHARS = 50_000, 10_000
    save, flush, calls = tokenize.save_progress, shards.ShardWriter.flush, []

    def saving(run_dir, record):
        save(run_dir, record)
        calls.append(record["items"])

    def flushing(self, durable=False):
        sizes = flush(self, durable)
        if len(calls) == stop_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return sizes

    tokenize.save_progress, shards.ShardWriter.flush = saving, flushing
    runpy.run_module("gptcli", run_name="__main__")
    """
)


def _corpus(folder: Path, docs: int = 1200) -> None:
    """JSON lines of three Shakespeare paragraphs each (about 0.5 MB for 1200)."""
    paras = [p for p in (SHARED_DATA / "tinyshakespeare.txt").read_text().split("\n\n") if p]
    lines = [json.dumps({"text": "\n\n".join(paras[i : i + 3])}) for i in range(0, 3 * docs, 3)]
    (folder / "corpus.jsonl").write_text("\n".join(lines) + "\n")


def _folder(tmp_path: Path, name: str, extra: str = "") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    _corpus(folder)
    (folder / "c.yaml").write_text(RECIPE + extra)
    return folder


def _tokenize(folder: Path, *sets: str):
    args = [a for s in sets for a in ("--set", s)]
    proc = gptcli("tokenize", "c.yaml", *args, cwd=folder)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def _stopped(
    folder: Path, records: int, sig: int | None, *sets: str
) -> subprocess.CompletedProcess:
    """Tokenize, stopped by sig after the given number of progress records (sig None: killed
    during the chunk after them, see KILL_MID_WRITE)."""
    hook = folder / "stop.py"
    hook.write_text(STOP_AFTER_RECORD if sig else KILL_MID_WRITE)
    args = [a for s in sets for a in ("--set", s)]
    how = [str(records), str(int(sig))] if sig else [str(records)]
    cmd = [sys.executable, str(hook), *how, "tokenize", "c.yaml", *args]
    return subprocess.run(cmd, cwd=folder, env=run_env(), capture_output=True, text=True)


def _outputs(folder: Path) -> dict:
    data = folder / "runs" / "c" / "data"
    manifest = json.loads((data / "manifest.json").read_text())
    manifest.pop("elapsed_s")
    for source in manifest["corpus"]["sources"]:  # the copies in each folder differ by mtime
        for f in source["files"]:
            f.pop("mtime_ns")
    return {
        "train": (data / "train.bin").read_bytes(),
        "val": (data / "val.bin").read_bytes(),
        "tokenizer": (folder / "runs" / "c" / "tokenizer.json").read_bytes(),
        "manifest": manifest,
        "left": sorted(p.name for p in data.iterdir()),
    }


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    folder = _folder(tmp_path_factory.mktemp("whole"), "whole")
    _tokenize(folder)
    return _outputs(folder)


@pytest.mark.parametrize("sig, code", [(signal.SIGKILL, -9), (signal.SIGTERM, 143)])
def test_an_interrupted_tokenize_resumes_to_the_same_shards(tmp_path, uninterrupted, sig, code):
    """Stopped after its 4th progress record (kill -9 or SIGTERM), the rerun reuses
    the tokenizer, skips what was written and ends byte-identical to an uninterrupted run."""
    folder = _folder(tmp_path, "cut")
    stopped = _stopped(folder, 4, sig)
    assert stopped.returncode == code, stopped.stderr[-2000:]
    assert not (folder / "runs/c/data/train.bin").exists()
    again = _tokenize(folder)
    assert "reusing the tokenizer trained on this corpus" in again.stderr
    assert "training a 300-token" not in again.stderr
    assert re.search(r"resuming after [\d.]+ MB of text \([\d,]+ documents", again.stderr)
    assert _outputs(folder) == uninterrupted  # no partial files or progress record left


def test_a_kill_in_the_middle_of_a_chunk_cuts_the_partial_shards_back(tmp_path, uninterrupted):
    """Killed after a chunk's tokens reached the partial shards but before its progress record:
    the rerun cuts them back to the recorded sizes and ends byte-identical."""
    folder = _folder(tmp_path, "torn")
    assert _stopped(folder, 2, None).returncode == -9
    data = folder / "runs" / "c" / "data"
    recorded = json.loads((data / ".progress.json").read_text())["sizes"]
    written = {s: (data / f".{s}.bin.partial").stat().st_size for s in recorded}
    assert all(written[s] >= recorded[s] for s in recorded)
    assert written != recorded, (written, recorded)  # more than the record: cut back
    again = _tokenize(folder)
    assert "resuming after" in again.stderr, again.stderr[-2000:]
    assert _outputs(folder) == uninterrupted


def test_a_changed_corpus_discards_the_progress(tmp_path):
    folder = _folder(tmp_path, "changed")
    assert _stopped(folder, 3, signal.SIGKILL).returncode == -9
    _corpus(folder, docs=1100)
    again = _tokenize(folder)
    assert "resuming" not in again.stderr and "training a 300-token" in again.stderr
    manifest = _outputs(folder)["manifest"]
    assert manifest["train"]["documents"] + manifest["val"]["documents"] == 1100


def test_max_tokens_stops_at_a_document_boundary_and_resumes_alike(
    tmp_path, uninterrupted, monkeypatch
):
    """A sample: train + val stop once they reach data.max_tokens, said in the log and the
    manifest; the cap decides whether the shards are up to date, and an interrupted capped
    run resumes to the same shards."""
    cap = 300_000  # past a few chunks, then a flush per document near the cap
    straight = _folder(tmp_path, "capped")
    proc = _stopped(straight, 10_000, signal.SIGKILL, f"data.max_tokens={cap}")  # never stops
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = _outputs(straight)
    m = out["manifest"]
    total = m["train"]["tokens"] + m["val"]["tokens"]
    assert m["max_tokens"] == cap and m["stopped_early"] is True
    assert cap <= total < cap + 2000 and m["val"]["tokens"] > 0
    assert f"stopped at {total:,} tokens (data.max_tokens {cap:,})" in proc.stderr
    whole = uninterrupted["manifest"]
    assert m["train"]["documents"] + m["val"]["documents"] < whole["train"]["documents"]
    assert out["train"] == uninterrupted["train"][: len(out["train"])]
    monkeypatch.chdir(straight)
    for max_tokens, fresh in ((cap, True), (cap + 1, False), (0, False)):
        r = recipe.from_dict(
            {"name": "c", "tokenizer": {"vocab_size": 300}, "data": {"source": "corpus.jsonl"}}
        )
        r.data.max_tokens = max_tokens
        assert tokenize.is_up_to_date(r, straight / "runs" / "c") is fresh, max_tokens

    cut = _folder(tmp_path, "capped-cut")
    assert _stopped(cut, 3, signal.SIGKILL, f"data.max_tokens={cap}").returncode == -9
    again = _stopped(cut, 10_000, signal.SIGKILL, f"data.max_tokens={cap}")  # same chunks
    assert again.returncode == 0 and "resuming" in again.stderr, again.stderr[-2000:]
    assert _outputs(cut) == out


def test_max_tokens_reads_only_the_start_of_the_corpus(tmp_path):
    """A small sample of a big corpus neither trains the BPE on nor encodes the rest: a broken
    line in a later file is never reached."""
    folder = _folder(tmp_path, "start")
    (folder / "corpus").mkdir()
    (folder / "corpus.jsonl").rename(folder / "corpus" / "a.jsonl")
    (folder / "corpus" / "b.jsonl").write_text('{"text": "fine"}\n{"text": broken\n')
    (folder / "c.yaml").write_text(RECIPE.replace("corpus.jsonl", "corpus"))
    proc = _tokenize(folder, "data.max_tokens=50000")
    assert "stopped at" in proc.stderr
    assert _outputs(folder)["manifest"]["stopped_early"] is True
    shown = gptcli("inspect", "runs/c", cwd=folder)
    assert shown.returncode == 0, shown.stderr
    assert "first 50,000 tokens (data.max_tokens)" in shown.stdout
