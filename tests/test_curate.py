"""Corpus curation in tokenize: which documents each rule removes and which stay, across sources
and splits, reported in the manifest and by `inspect --removed`, resumable, and bad settings
refused naming the key."""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO, SHARED_DATA, assert_one_line_error, gptcli, gptcli_without, run_env

from gptcli import recipe as recipe_mod
from gptcli import tokenizer
from gptcli.console import UserError
from gptcli.data import curate, tokenize
from gptcli.data.shards import load_shard
from gptcli.finetune import task_records

STORIES = SHARED_DATA / "tinystories" / "TinyStories-train.head.txt"


def stories(n: int, start: int = 0) -> list[str]:
    docs = [d.strip() for d in STORIES.read_text().split("<|endoftext|>") if d.strip()]
    return docs[start : start + n]


def edited(doc: str, seed: int = 0) -> str:
    """A near copy: one word replaced (word-5-gram Jaccard about 0.9 for a story)."""
    words = doc.split()
    words[random.Random(seed).randrange(len(words))] = "zebra"
    return " ".join(words)


def decide(data: dict, docs: list[str], folder: Path) -> tuple[list[str], curate.Curator]:
    """The documents a curator with these data: keys keeps, and the curator (its counts)."""
    cfg = recipe_mod.from_dict({"data": data}).data
    curator = curate.Curator(cfg, folder)
    kept = list(curator.curated(docs, lambda d: d, lambda d: "corpus"))
    curator.close()
    return kept, curator


def reasons(curator: curate.Curator) -> dict[str, int]:
    return {r: v["documents"] for r, v in curator.removed().get("corpus", {}).items()}


# --------------------------------------------------------------------------- each rule


LONG = stories(1)[0]  # a story of about 150 words, passing every default threshold


@pytest.mark.parametrize(
    "filters, goes",
    [
        ({"min_words": True}, "Too short to keep."),
        ({"min_words": 3}, "Two words"),
        ({"max_words": 400}, " ".join([LONG] * 4)),
        ({"mean_word_length": True}, "a b c d e f g h i j k l m n o p q r s t u v w x y z " * 3),
        ({"mean_word_length": [3, 10]}, "Incomprehensibilities " * 60),
        ({"min_alpha_fraction": True}, "12 + 34 = 46; 56 * 78 = 4368; 90 / 3 = 30. " * 10),
        ({"max_repeated_lines": True}, "\n".join(["Home", "Menu", "Home", "Menu", "Story"] * 4)),
        ({"repeated_ngrams": True}, "buy cheap pills now " * 40),
        ({"drop_regex": "(?i)lorem ipsum"}, "Lorem Ipsum dolor sit amet " + LONG),
    ],
)
def test_each_filter_drops_what_it_names_and_keeps_the_rest(tmp_path, filters, goes):
    kept, curator = decide({"filters": filters}, [LONG, goes, LONG + " The end."], tmp_path)
    assert kept == [LONG, LONG + " The end."]
    (key,) = filters
    assert reasons(curator) == {key: 1}
    (example,) = curator.examples[key]
    assert example["text"] == goes[: curate.EXAMPLE_CHARS] and example["document"] == 1


def test_rules_are_tried_in_order_and_the_first_names_the_reason(tmp_path):
    docs = ["short copy", "short copy", LONG, LONG]
    kept, curator = decide({"dedup": "exact", "filters": {"min_words": 3}}, docs, tmp_path)
    assert kept == [LONG] and reasons(curator) == {"min_words": 2, "exact_duplicate": 1}


def test_exact_and_near_copies_go_the_first_copy_stays(tmp_path):
    a, b, c = stories(3)
    docs = [a, b, "  " + a.upper().replace(" ", "\n "), edited(b), c, edited(c, 1), b]
    kept, curator = decide({"dedup": "near"}, docs, tmp_path)
    assert kept == [a, b, c]
    assert reasons(curator) == {"exact_duplicate": 2, "near_duplicate": 2}
    assert [e["copy_of"] for e in curator.examples["near_duplicate"]] == [1, 4]
    kept, curator = decide({"dedup": "exact"}, docs, tmp_path / "exact")
    assert kept == [a, b, edited(b), c, edited(c, 1)]  # exact keeps the edited ones


def test_near_threshold_decides_how_near(tmp_path):
    a = stories(1)[0]
    words = a.split()
    halfway = " ".join(words[: len(words) // 2] + ["other"] * (len(words) // 2))
    assert decide({"dedup": "near"}, [a, halfway], tmp_path)[0] == [a, halfway]
    loose = {"dedup": "near", "dedup_threshold": 0.2}
    assert decide(loose, [a, halfway], tmp_path / "loose")[0] == [a]


def test_decontamination_by_a_local_file(tmp_path):
    """A training document sharing a 13-word run with an evaluation record goes; one sharing 12
    words of it stays (punctuation and case do not count)."""
    question = "What is the name of the girl who found a needle in her room one sunny day?"
    (tmp_path / "eval.jsonl").write_text(json.dumps({"q": question, "a": "Lily"}) + "\n")
    words = question.split()
    shares_13 = "So: " + " ".join(words[2:15]).upper() + " -- said the teacher."
    shares_12 = "So: " + " ".join(words[2:14]) + " said the teacher."
    docs = [LONG, shares_13, shares_12]
    data = {"decontaminate": [str(tmp_path / "eval.jsonl")]}
    kept, curator = decide(data, docs, tmp_path / "state")
    assert kept == [LONG, shares_12] and reasons(curator) == {"contaminated": 1}
    data["decontaminate_ngram"] = 12
    assert decide(data, docs, tmp_path / "n12")[0] == [LONG]


def test_decontamination_by_an_lm_eval_task(tmp_path, monkeypatch):
    """A task name is read through lm-eval (gptcli's own SST-2 task reads the shared dev file)."""
    monkeypatch.chdir(REPO)  # next to ../shared/data, which the task reads
    dev = json.loads((SHARED_DATA / "classify" / "sst2_dev.jsonl").open().readline())["text"]
    docs = [LONG, f"A review: {dev} That was it."]
    data = {"decontaminate": ["gptcli_sst2"], "decontaminate_ngram": 5}
    assert decide(data, docs, tmp_path)[0] == [LONG]


# --------------------------------------------------------------------------- through tokenize


def write(folder: Path, name: str, docs: list[str]) -> None:
    (folder / name).write_text("\n<|endoftext|>\n".join(docs))


def tokenized(folder: Path, data: dict) -> tuple[dict, Path]:
    r = recipe_mod.from_dict({"name": "c", "tokenizer": {"vocab_size": 300}, "data": data})
    run = folder / "runs" / "c"
    manifest, _ = tokenize.prepare(r, run)
    return manifest, run


def split_texts(run: Path, manifest: dict) -> dict[str, list[str]]:
    tok = tokenizer.load(run / "tokenizer.json")
    return {
        s: tok.decode(load_shard(run, s, manifest).tolist(), skip_special_tokens=False).split(
            "<|endoftext|>"
        )[:-1]
        for s in ("train", "val")
    }


def test_dedup_runs_across_sources_and_splits_before_weights(tmp_path, monkeypatch):
    """Copies in a second source go (counted against it), a weight repeats only what stays, and
    no document has a copy in the other split."""
    monkeypatch.chdir(tmp_path)
    first = stories(150)
    second = [first[3], edited(first[40]), *stories(30, start=200), stories(1, start=200)[0]]
    write(tmp_path, "a.txt", first)
    write(tmp_path, "b.txt", second)
    data = {"source": ["a.txt", {"path": "b.txt", "weight": 2}], "dedup": "near"}
    manifest, run = tokenized(tmp_path, data)
    by_source = {e["source"]: e["removed"] for e in manifest["sources"]}
    assert by_source["a.txt"] == {}
    gone = {r: v["documents"] for r, v in by_source["b.txt"].items()}
    assert gone == {"exact_duplicate": 2, "near_duplicate": 1}
    assert manifest["curation"]["removed"]["exact_duplicate"]["documents"] == 2
    assert manifest["format_version"] == 6
    docs = manifest["train"]["documents"] + manifest["val"]["documents"]
    assert docs == 150 + 2 * 30  # the weight repeats the 30 that stay, never a removed copy
    texts = split_texts(run, manifest)
    norm = {s: {" ".join(t.split()) for t in texts[s]} for s in texts}
    assert norm["train"] and norm["val"] and not norm["train"] & norm["val"]
    assert not (run / "data" / curate.STATE_DIR).exists()  # finished: its state is gone
    removed = json.loads((run / "data" / "removed.json").read_text())
    assert removed["examples"]["near_duplicate"][0]["copy_of"] == 40


def test_a_training_copy_of_a_dev_document_goes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dev = stories(5, start=500)
    write(tmp_path, "dev.txt", dev + [dev[0]])
    write(tmp_path, "train.txt", stories(120) + [dev[2], edited(dev[3])])
    manifest, run = tokenized(tmp_path, {"source": "train.txt", "dev": "dev.txt", "dedup": "near"})
    gone = manifest["curation"]["removed"]
    assert {r: v["documents"] for r, v in gone.items()} == {
        "exact_duplicate": 1,
        "near_duplicate": 1,
    }
    assert manifest["train"]["documents"] == 120 and manifest["val"]["documents"] == 6


def test_curation_settings_are_part_of_the_fingerprint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "a.txt", stories(120) + stories(3))
    plain, run = tokenized(tmp_path, {"source": "a.txt"})
    assert plain["format_version"] == 5 and "curation" not in plain
    assert "curation" not in plain["corpus"] and not (run / "data" / "removed.json").exists()
    exact, _ = tokenized(tmp_path, {"source": "a.txt", "dedup": "exact"})
    assert exact["train"]["documents"] + exact["val"]["documents"] == 120
    r = recipe_mod.from_dict({"name": "c", "tokenizer": {"vocab_size": 300}})
    r.data.source = "a.txt"
    for dedup, current in (("exact", True), ("near", False), ("none", False)):
        r.data.dedup = dedup
        assert tokenize.is_up_to_date(r, run) is current, dedup
    again, _ = tokenized(tmp_path, {"source": "a.txt"})
    assert "curation" not in again and not (run / "data" / "removed.json").exists()


def test_everything_removed_exits_2_saying_by_what(tmp_path, gptcli_inproc):
    """Tiny Shakespeare is one document: a maximum of words leaves nothing."""
    (tmp_path / "c.yaml").write_text(
        f"name: c\ndata:\n  source: {SHARED_DATA / 'tinyshakespeare.txt'}\n"
        "  filters: {max_words: true}\n"
    )
    proc = gptcli_inproc("tokenize", "c.yaml", "--quiet", cwd=tmp_path)
    assert_one_line_error(proc, "every document was removed by curation", "1 max_words")
    assert not (tmp_path / "runs" / "c" / "data" / curate.STATE_DIR).exists()


def test_inspect_shows_the_counts_and_removed_examples(tmp_path, monkeypatch, gptcli_inproc):
    monkeypatch.chdir(tmp_path)
    first = stories(110)
    write(tmp_path, "a.txt", first + [edited(first[7]), "tiny"])
    (tmp_path / "c.yaml").write_text(
        "name: c\ntokenizer: {vocab_size: 300}\n"
        "data: {source: a.txt, dedup: near, filters: {min_words: 2}}\n"
    )
    assert gptcli_inproc("tokenize", "c.yaml", cwd=tmp_path).returncode == 0
    shown = gptcli_inproc("inspect", "runs/c", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"near_duplicate +1 documents", shown.stdout), shown.stdout
    assert re.search(r"min_words +1 documents", shown.stdout)
    proc = gptcli_inproc("inspect", "runs/c", "--removed", "near_duplicate", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "a copy of document 7" in proc.stdout and "zebra" in proc.stdout
    as_json = gptcli_inproc("inspect", "runs/c", "--removed", "min_words", "--json", cwd=tmp_path)
    assert json.loads(as_json.stdout)["examples"][0]["text"] == "tiny"
    bad = gptcli_inproc("inspect", "runs/c", "--removed", "dupes", cwd=tmp_path)
    assert_one_line_error(bad, "--removed 'dupes': not a reason", "near_duplicate")
    none = gptcli_inproc("inspect", "runs/c", "--removed", "contaminated", cwd=tmp_path)
    assert_one_line_error(none, "nothing was removed as contaminated", "near_duplicate (1)")


# --------------------------------------------------------------------------- resuming


def test_saved_decisions_and_signatures_continue_where_they_stopped(tmp_path):
    """A curator restored from a saved state (the near index rebuilt from its signatures)
    decides the rest of the corpus as one that never stopped."""
    base = stories(60)
    docs = base + [edited(d, i) for i, d in enumerate(base[:30])] + base[30:40]
    random.Random(1).shuffle(docs)
    cfg = recipe_mod.from_dict({"data": {"dedup": "near", "filters": {"min_words": 40}}}).data
    whole = curate.Curator(cfg, tmp_path / "whole")
    expected = list(whole.curated(docs, lambda d: d, lambda d: "c"))
    first = curate.Curator(cfg, tmp_path / "cut")
    list(first.curated(docs[:50], lambda d: d, lambda d: "c"))
    state = first.save()
    first.close()
    assert state["decided"] == 50 and state["near"] > 0
    resumed = curate.Curator(cfg, tmp_path / "cut", state)
    assert list(resumed.curated(docs, lambda d: d, lambda d: "c")) == expected
    assert resumed.removed() == whole.removed()
    resumed.close()
    stale = curate.Curator(cfg, tmp_path / "cut", None)  # no progress record: start over
    assert stale.decided == 0 and stale.near.file.rows == 0
    stale.close()
    whole.close()


STOP_AFTER_RECORD = textwrap.dedent(
    """\
    import os, runpy, sys
    from gptcli.data import tokenize

    tokenize.CHUNK_CHARS, tokenize.SYNC_CHARS = 50_000, 10_000
    save, calls = tokenize.save_progress, []

    def saving(run_dir, record):
        save(run_dir, record)
        calls.append(record["items"])
        if len(calls) == 3:
            os.kill(os.getpid(), 9)

    tokenize.save_progress = saving
    runpy.run_module("gptcli", run_name="__main__")
    """
)


def _outputs(folder: Path) -> dict:
    data = folder / "runs" / "c" / "data"
    manifest = json.loads((data / "manifest.json").read_text())
    manifest.pop("elapsed_s")
    for source in manifest["corpus"]["sources"]:
        for f in source["files"]:
            f.pop("mtime_ns")
    return {
        "shards": [(data / f"{s}.bin").read_bytes() for s in ("train", "val")],
        "manifest": manifest,
        "removed": (data / "removed.json").read_text(),
        "left": sorted(p.name for p in data.iterdir()),
    }


def test_a_killed_curated_tokenize_resumes_to_the_same_shards(tmp_path):
    base = stories(220)
    docs = base + [edited(d, i) for i, d in enumerate(base[:80])] + base[100:140]
    random.Random(2).shuffle(docs)
    recipe_text = (
        "name: c\ntokenizer: {vocab_size: 300}\n"
        "data: {source: corpus.txt, dedup: near, filters: {min_words: 60}}\n"
    )
    outputs = []
    for name, kill in (("whole", False), ("cut", True)):
        folder = tmp_path / name
        folder.mkdir()
        write(folder, "corpus.txt", docs)
        (folder / "c.yaml").write_text(recipe_text)
        if kill:
            (folder / "stop.py").write_text(STOP_AFTER_RECORD)
            cmd = [sys.executable, "stop.py", "tokenize", "c.yaml"]
            proc = subprocess.run(cmd, cwd=folder, env=run_env(), capture_output=True, text=True)
            assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
            assert (folder / "runs/c/data" / curate.STATE_DIR / "near.sig").is_file()
        proc = gptcli("tokenize", "c.yaml", cwd=folder)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert ("resuming after" in proc.stderr) is kill
        outputs.append(_outputs(folder))
    assert outputs[0] == outputs[1]
    gone = outputs[0]["manifest"]["curation"]["removed"]
    assert gone["exact_duplicate"]["documents"] >= 30 and gone["near_duplicate"]["documents"] >= 60


# --------------------------------------------------------------------------- bad settings


@pytest.mark.parametrize(
    "setting, needles",
    [
        ("data.dedup=fuzzy", ["data.dedup", "one of 'none', 'exact', 'near'"]),
        ("data.dedup_threshold=1.5", ["data.dedup_threshold", "in (0, 1]"]),
        ("data.filters.min_words=0", ["data.filters.min_words", ">= 1"]),
        ("data.filters.max_words=2.5", ["data.filters.max_words", "number of words"]),
        ("data.filters.mean_word_length=[5, 3]", ["data.filters.mean_word_length", "min < max"]),
        ("data.filters.min_alpha_fraction=2", ["data.filters.min_alpha_fraction", "[0, 1]"]),
        ("data.filters.drop_regex=(unclosed", ["data.filters.drop_regex", "a valid regex"]),
        ("data.filters.min_word=3", ["unknown recipe key", "data.filters.min_words"]),
        ("data.decontaminate_ngram=0", ["data.decontaminate_ngram", ">= 1"]),
        ("data.decontaminate=[evals/missing.jsonl]", ["data.decontaminate", "no such file"]),
    ],
)
def test_bad_settings_exit_2_naming_the_key(tmp_path, gptcli_inproc, setting, needles):
    (tmp_path / "c.yaml").write_text("name: c\ndata: {builtin_mb: 0.01}\n")
    proc = gptcli_inproc("tokenize", "c.yaml", "--set", setting, cwd=tmp_path)
    assert_one_line_error(proc, *needles)
    assert not (tmp_path / "runs" / "c" / "data" / "train.bin").exists()


def test_near_without_rensa_exits_2_with_the_install_line(tmp_path):
    (tmp_path / "c.yaml").write_text("name: c\ndata: {builtin_mb: 0.01, dedup: near}\n")
    proc = gptcli_without("rensa", "tokenize", "c.yaml", cwd=tmp_path)
    assert_one_line_error(proc, "data.dedup: near", "pip install 'gptcli[curate]'")


# an lm-eval task whose data is on the Hub only, found where gptcli's own tasks are looked up
HUB_TASK = """\
task: hub_only_task
dataset_path: gptcli-tests/never-cached
output_type: multiple_choice
test_split: test
doc_to_text: "{{text}}"
doc_to_choice: ["a", "b"]
doc_to_target: 0
"""
WITH_TASKS_HERE = textwrap.dedent(
    """\
    import pathlib, runpy
    from gptcli.data import decontam

    decontam.BUNDLED_TASKS = pathlib.Path("tasks").resolve()
    runpy.run_module("gptcli", run_name="__main__")
    """
)


def test_an_uncached_task_offline_exits_2_naming_it(tmp_path):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "hub_only_task.yaml").write_text(HUB_TASK)
    (tmp_path / "run.py").write_text(WITH_TASKS_HERE)
    (tmp_path / "c.yaml").write_text(
        "name: c\ndata: {builtin_mb: 0.01, decontaminate: [hub_only_task]}\n"
    )
    env = run_env(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    cmd = [sys.executable, "run.py", "tokenize", "c.yaml", "--quiet"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert_one_line_error(proc, "data.decontaminate: task 'hub_only_task'", "offline")


# --------------------------------------------------------------------------- finetune tasks


def test_task_examples_lose_copies_and_contamination_never_dev(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = [{"prompt": f"What is {i} plus {i}?", "response": f"It is {2 * i}."} for i in range(20)]
    leak = {
        "prompt": "Repeat after me: the quick brown fox jumps over the lazy dog",
        "response": "ok",
    }
    train = rows + [rows[3], dict(rows[5]), leak, rows[0]]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (tmp_path / "dev.jsonl").write_text(json.dumps(rows[7]) + "\n" + json.dumps(rows[7]) + "\n")
    (tmp_path / "eval.txt").write_text("the quick brown fox jumps over the lazy dog")
    data = {
        "source": "train.jsonl",
        "dev": "dev.jsonl",
        "dedup": "exact",
        "decontaminate": ["eval.txt"],
        "decontaminate_ngram": 5,
    }
    r = recipe_mod.from_dict({"task": "sft", "data": data})
    kept, dev = task_records(r, tmp_path / "run")
    assert [x for _, x in kept] == rows[:7] + rows[8:]  # the copy of a dev example goes too
    assert len(dev) == 2  # dev is never curated
    removed = json.loads((tmp_path / "run" / "data" / "removed.json").read_text())["removed"]
    assert {k: v["documents"] for k, v in removed["train.jsonl"].items()} == {
        "contaminated": 1,
        "exact_duplicate": 4,
    }
    for bad, key in (
        ({"dedup": "near"}, "data.dedup: near"),
        ({"filters": {"min_words": 2}}, "data.filters"),
    ):
        r = recipe_mod.from_dict({"task": "sft", "data": {"source": "train.jsonl", **bad}})
        with pytest.raises(UserError, match=key):
            task_records(r, tmp_path / "run")


def test_signatures_are_the_same_in_every_process():
    """Saved signatures must mean the same in the next run of tokenize: no per-process hash."""
    code = (
        "from gptcli.data import dedup\n"
        "import tempfile, pathlib\n"
        "d = dedup.NearIndex(0.8, pathlib.Path(tempfile.mkdtemp()), 0, 1 << 20)\n"
        "print(d.signatures(['the quick brown fox jumps over it'])[0][0, :4].tolist())\n"
    )
    out = {
        subprocess.run(
            [sys.executable, "-c", code],
            env=run_env(PYTHONHASHSEED=str(seed)),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in (1, 2)
    }
    assert len(out) == 1 and len(json.loads(out.pop())) == 4, out
