"""Bundled recipes: found by name from any folder, listed by `inspect --recipes`, and a bundled
recipe whose data is not here says which key to set."""

import json

import pytest
from conftest import REPO, assert_one_line_error, gptcli

from gptcli import bundled
from gptcli import inspect as inspect_mod
from gptcli.console import UserError

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
