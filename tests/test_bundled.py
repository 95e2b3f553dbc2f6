"""Bundled recipes: found by name from any folder, listed by `inspect --recipes`, and a bundled
recipe whose data is not here says which key to set."""

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import pytest
from conftest import REPO, assert_one_line_error, gptcli

from gptcli import bundled
from gptcli import inspect as inspect_mod
from gptcli import recipe as recipe_mod
from gptcli.console import UserError
from gptcli.data import corpus, hub, tokenize, url

# recipes/eval/ holds lm-eval task definitions, not recipes
NAMES = sorted(
    p.relative_to(REPO / "recipes").with_suffix("").as_posix()
    for p in (REPO / "recipes").rglob("*.yaml")
    if p.relative_to(REPO / "recipes").parts[0] != "eval"
)


def test_checkout_recipes_folder_is_the_packaged_one():
    """One source of truth: the path users type in a checkout is the package's folder."""
    assert (REPO / "recipes").resolve() == REPO / "gptcli" / "recipes" == bundled.FOLDER
    assert {"tiny", "smoke", "shakespeare", "finetune/sst2"} <= set(NAMES)


def test_listing_shows_each_recipe_on_one_line(tmp_path):
    proc = gptcli("inspect", "--recipes", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert sorted(line.split()[0] for line in lines) == NAMES
    sst2 = next(line for line in lines if line.startswith("finetune/sst2 "))
    assert "SST-2 sentiment classifier" in sst2  # the recipe file's first comment line
    assert "data: ../shared/data/classify/sst2_train.jsonl" in sst2
    assert "starts from runs/sst2-lm" in sst2


def test_every_recipe_says_what_it_trains_in_one_sentence():
    """--json holds the same rows; each summary is the file's first line, a whole sentence."""
    rows = inspect_mod.bundled_recipes()["recipes"]
    assert all(r["summary"].endswith(".") and len(r["summary"]) < 100 for r in rows), rows
    assert any(r["name"] == "tiny" and r["data"] == "builtin:stories (generated)" for r in rows)


def test_eval_folder_holds_no_recipes(tmp_path, monkeypatch):
    """lm-eval task definitions in recipes/eval/ are neither listed nor found by name."""
    for rel in ("tiny.yaml", "eval/hellaswag.yaml", "finetune/sst2.yaml"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_text("# A recipe.\nname: x\n")
    monkeypatch.setattr(bundled, "FOLDER", tmp_path)
    monkeypatch.chdir(tmp_path / "eval")
    assert list(bundled.names()) == ["tiny", "finetune/sst2"]
    assert bundled.find("eval/hellaswag") is None and bundled.find("tiny") is not None


def test_bare_name_runs_the_bundled_recipe_and_says_which(tmp_path):
    (tmp_path / "smoke").mkdir()  # a folder of that name is no recipe file: it does not hide it
    sets = ("--set", "data.builtin_mb=0.02", "--set", "tokenizer.vocab_size=300")
    proc = gptcli("tokenize", "smoke", *sets, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"recipe: smoke is the bundled {bundled.FOLDER / 'smoke.yaml'}" in proc.stderr
    assert json.loads(proc.stdout)["run_dir"] == "runs/smoke"


def test_a_file_of_that_name_here_wins_and_yaml_names_are_paths(tmp_path, gptcli_inproc):
    (tmp_path / "tiny").write_text("name: mine\nmodle: {}\n")  # a local file, not the bundled
    proc = gptcli_inproc("pretrain", "tiny", cwd=tmp_path)
    assert_one_line_error(proc, "tiny: unknown", "modle")
    proc = gptcli_inproc("pretrain", "recipes/tiny.yaml", cwd=tmp_path)  # outside a checkout
    assert_one_line_error(proc, "recipe not found: recipes/tiny.yaml", "named 'tiny'")
    proc = gptcli_inproc("finetune", "nope", cwd=tmp_path)
    assert_one_line_error(proc, "recipe not found: nope", "gptcli inspect --recipes")


def test_bundled_recipe_without_its_data_names_the_key(tmp_path, gptcli_inproc):
    proc = gptcli_inproc("finetune", "finetune/sst2", cwd=tmp_path)
    needles = ("recipe finetune/sst2: its data", "is not here", "--set data.source=PATH")
    assert_one_line_error(proc, *needles, "--set data.dev=PATH", "fields text and label")


@pytest.mark.parametrize(
    "name, needles",
    [
        ("finetune/rte", ["fields premise, hypothesis and label (entailment or"]),
        ("finetune/sft", ["fields prompt and response", "'messages'"]),
        ("sst2-pretrain", ["a .jsonl with a 'text' field"]),
    ],
)
def test_missing_data_message_says_what_the_file_holds(tmp_path, monkeypatch, name, needles):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as e:
        bundled.load(name, [])
    for needle in (f"recipe {name}", "--set data.source=PATH", *needles):
        assert needle in str(e.value)


def test_bundled_recipe_with_given_data_goes_on(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.jsonl").write_text('{"text": "good", "label": 1}\n')
    recipe = bundled.load("finetune/sst2", ["data.source=train.jsonl", "data.dev="])
    assert recipe.data.source == "train.jsonl" and recipe.init == "runs/sst2-lm"


def test_inspect_needs_a_path_or_recipes(tmp_path, gptcli_inproc):
    assert_one_line_error(gptcli_inproc("inspect", cwd=tmp_path), "--recipes")
    proc = gptcli_inproc("inspect", "runs", "--recipes", cwd=tmp_path)
    assert_one_line_error(proc, "no PATH")


def _help(command: str) -> str:
    """COMMAND's --help as one line of words (no wrapping, no box)."""
    return " ".join(gptcli(command, "--help").stdout.replace("\u2502", " ").split())


def test_help_says_run_dir_and_out_are_paths():
    assert "run_dir: a path, used as given" in _help("pretrain")  # finetune's says the same
    assert "Folder to write (new or empty): a path, used as given" in _help("export")


# ----------------------------------------------------------- what a run of each recipe records

# Stand-in text for every file and download a bundled recipe reads: each field a task may name.
STAND_IN_ROW = {
    "text": "a small story.",
    "label": 1,
    "premise": "it rains.",
    "hypothesis": "it is wet.",
    "sentence1": "one.",
    "sentence2": "two.",
    "context": "once",
    "choices": ["a", "b"],
    "prompt": "2+2?",
    "response": "4",
}
STAND_IN_TEXT = "Once upon a time.\n<|endoftext|>\nThe end came soon.\n"

# sha256 of record_of(name) for each bundled recipe, computed by the code before the data-source
# schema moved into recipe.py: a change here makes every existing run of that recipe stale.
# Re-pinned once since, when recipe.yaml gained `train.memory_check: true` (nothing else changed;
# recipe.yaml records provenance, and a run's up-to-date check reads the fingerprint and manifest).
# fineweb-edu re-pinned when it turned on curation (data.dedup: near and Gopher filters): its
# recipe.yaml and fingerprint gained those settings; every other recipe records what it did.
RECORDED = {
    "chat": "9c9da696359140c9f6c5da04a47451f6608da3e5f4969ef93392c0eebadbe794",
    "chat-base": "b420f3f7f5fc1567a482a60f20c0abcd9cabc0a67e5d1c45bc7e03ef4db3f761",
    "finetune-lm": "c1f759aee97a1de1e28dcabe46cc786e2f0f9e95f11951205e4da869eece68bf",
    "fineweb-edu": "61e9074ebb86dda8e6d6d8031041036d60386ea9cdcb667afad806e80e7123c7",
    "gpt2-124m": "76d853f19e741f73663f884b4f7f4ba873554571343a71a642edc5285bfec8e8",
    "shakespeare": "7732aa396c890b23b4bea68585a99318a7ac75ea9fcf752d0f074a5b231dc6a4",
    "smoke": "51d58da57dad809e76d34b9f21133f81da51a31961ee6fa8e750ee301886a288",
    "sst2-pretrain": "d620b25fc35db6c902df54d547f3c631995bcafda5e8b218a4d6cc51ddb5ea10",
    "tiny": "b3a638d50b68bb2920c9a9683246f4b5f1fb7c20a7902aa9b86beea8cc82c750",
    "tinystories": "1ef853769d0b7dc6a8be5d8e46cd8e2ac6915f17ee09f15dc57bc0eb7ba27b4e",
    "finetune/rte": "805f4445cc58eb5964e193fd0e43eb34839ec565ab5f3ae29baa4ae91bcb039a",
    "finetune/sft": "11779ee8fbbabfc67ac12ba36b450e400116ee9336db64eb30fd236e5dab0fce",
    "finetune/similarity": "2514d67e7d07737a9141839f02b56a31d95872a57633ecd8868b84888473757c",
    "finetune/sst2": "ade57e58d7afea3edf506464380fac4d452f48f72b2a070f5f60521cb8211ac0",
    "finetune/story-choice": "1e03f535800b9972964433c87b4b26406f06d988e67673e9edf5cb2025785792",
}


def record_of(name: str, tmp_path, monkeypatch) -> dict:
    """What a run of the bundled recipe NAME writes that decides whether it is up to date: its
    recipe.yaml, its corpus fingerprint, the manifest's per-source entries (and a task's
    examples), with tiny stand-ins for its files, downloads and Hub datasets."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("GPTCLI_CACHE", str(tmp_path / "cache"))
    calls: list = []

    def fetch(url_, sha256="", max_mb=0.0, allow_html=False):
        calls.append(["fetch", url_, sha256, max_mb, allow_html])
        path = tmp_path / "cache" / url_.rsplit("/", 1)[-1]
        path.parent.mkdir(exist_ok=True)
        path.write_text(STAND_IN_TEXT)
        return path

    def hub_identity(dataset, known):
        calls.append(["identity", repr(dataset), known])
        return {"dataset": dataset.name, "config": dataset.config, "split": dataset.split}

    def hub_documents(dataset, reading):
        calls.append(["documents", repr(dataset), reading.text_field, reading.errors])
        yield from ("one hub document.", "another.")

    monkeypatch.setattr(url, "fetch", fetch)
    monkeypatch.setattr(hub, "identity", hub_identity)
    monkeypatch.setattr(hub, "documents", hub_documents)
    monkeypatch.setattr(hub, "size", lambda dataset: 1234)
    r = recipe_mod.load(bundled.names()[name])
    for _, path in bundled.local_data(r):
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        text = STAND_IN_TEXT if p.suffix == ".txt" else json.dumps(STAND_IN_ROW) + "\n"
        p.write_text(text * 3)
    small = dataclasses.replace(r.data, builtin_mb=0.002)  # the generated corpus, in short
    tally: dict = {}
    try:
        documents = [d for _, d in corpus.iter_documents(small, r.seed, work, tally=tally)]
    except UserError as e:  # builtin:story-chat holds task examples, not text
        documents = [str(e)]
    out = {
        "recipe.yaml": recipe_mod.dump(r),
        "data_needed": bundled.data_needed(r),
        "local_data": bundled.local_data(r),
        "fingerprint": corpus.fingerprint(r.data, r.seed, work),
        "sources_read": tokenize.sources_read(tally),
        "documents": documents[:3] + [len(documents)],
        "bytes": [corpus.corpus_bytes(small, work), corpus.text_bytes(small, work)],
        "calls": calls,
    }
    if r.task.kind != "lm":
        srcs = r.data.sources() + [r.data.dev_source()]
        out["records"] = [corpus.records(s, small, work, r.seed) for s in srcs if s]
    text = json.dumps(out, sort_keys=True, default=str).replace(str(tmp_path), "<tmp>")
    # rensa's version is in a near-deduplicated corpus's fingerprint (a new rensa makes new
    # signatures), not in this pin: any rensa the curate extra allows records the same
    text = re.sub(r'"rensa": "[^"]*"', '"rensa": "<version>"', text)
    return json.loads(re.sub(r', "mtime_ns": \d+', "", text))


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_each_recipe_records_what_it_recorded_before(name, tmp_path, monkeypatch):
    """Fingerprints, manifests and recipe.yaml stay byte-identical, so no run goes stale."""
    record = record_of(name, tmp_path, monkeypatch)
    digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    assert digest == RECORDED[name], json.dumps(record, indent=1)


def test_every_bundled_recipe_has_a_recorded_fingerprint():
    assert sorted(RECORDED) == sorted(bundled.names())


# smoke sizes for the chat pair: a model of a few thousand parameters, a few steps
CHAT_SMOKE = ("data.builtin_mb=0.03", "tokenizer.vocab_size=300", "model.n_layer=1",
              "model.n_embd=32", "model.n_head=2", "train.max_steps=2", "train.eval_every=0",
              "train.eval_batches=1", "train.batch_size=2")  # fmt: skip


def test_the_chat_pair_trains_by_name_from_an_empty_folder(tmp_path):
    """`gptcli pretrain chat-base && gptcli finetune chat`, at smoke sizes: the second starts
    from the first's run folder and trains SFT on the generated conversations."""
    sets = [a for s in CHAT_SMOKE for a in ("--set", s)]
    proc = gptcli("pretrain", "chat-base", *sets, "--json", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    base = json.loads(proc.stdout)
    assert base["run_dir"] == "runs/chat-base" and base["step"] == 2
    saved = recipe_mod.load(tmp_path / "runs" / "chat-base" / "recipe.yaml")
    assert saved.model.block_size == 512 and saved.data.source == "builtin:stories"
    sets = [a for s in CHAT_SMOKE[:1] + CHAT_SMOKE[5:] for a in ("--set", s)]
    proc = gptcli("finetune", "chat", *sets, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    chat = json.loads(proc.stdout)
    assert chat["run_dir"] == "runs/chat" and chat["step"] == 2 and chat["val_loss"] > 0
    assert "sft:" in proc.stderr and "template gptcli-chat-v1" in proc.stderr
    saved = recipe_mod.load(tmp_path / "runs" / "chat" / "recipe.yaml")
    assert saved.task.kind == "sft" and saved.data.source == "builtin:story-chat"
