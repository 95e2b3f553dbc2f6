import dataclasses
import re
import typing
from pathlib import Path

import pytest
import yaml

from gptcli import bundled, recipe
from gptcli.console import UserError

REPO = Path(__file__).resolve().parents[1]


def test_defaults_need_no_keys():
    r = recipe.from_dict({})
    assert r.model.n_layer == 4 and r.train.lr == 1e-3 and r.data.source == "builtin:stories"


def test_overrides_parse_yaml_scalars():
    r = recipe.from_dict({}, ["train.lr=3e-4", "model.n_layer=6", "model.bias=false", "name=x"])
    assert r.train.lr == pytest.approx(3e-4)
    assert r.model.n_layer == 6 and r.model.bias is False and r.name == "x"
    assert isinstance(r.train.lr, float)


def test_int_accepted_for_float():
    assert recipe.from_dict({"train": {"lr": 1}}).train.lr == 1.0


def test_task_shorthand():
    assert recipe.from_dict({"task": "lm"}).task.kind == "lm"


@pytest.mark.parametrize(
    "data, overrides, needles",
    [
        (
            {"train": {"learning_rate": 1}},
            [],
            ["train.learning_rate", "closest valid key: train.lr"],
        ),
        ({}, ["model.n_layers=3"], ["model.n_layers", "model.n_layer"]),
        ({"model": {"n_layer": "four"}}, [], ["model.n_layer", "an integer"]),
        ({"model": {"n_embd": 100, "n_head": 3}}, [], ["model.n_embd", "divisible by n_head"]),
        ({"tokenizer": {"vocab_size": 200}}, [], ["tokenizer.vocab_size", ">= 257"]),
        ({"train": {"lr": 0}}, [], ["train.lr", "> 0"]),
        ({"train": {"lr": -1}}, [], ["train.lr"]),
        ({"model": {"positions": "alibi"}}, [], ["model.positions", "'learned'", "'rope'"]),
        ({"data": {"val_fraction": 1.5}}, [], ["data.val_fraction"]),
        ({"model": "big"}, [], ["model", "mapping"]),
        ({}, ["train.lr"], ["KEY=VALUE"]),
    ],
)
def test_bad_values_name_the_key(data, overrides, needles):
    with pytest.raises(UserError) as e:
        recipe.from_dict(data, overrides)
    for needle in needles:
        assert needle in str(e.value)


def test_shipped_recipes_load():
    """Every bundled recipe (recipes/eval/ holds lm-eval task definitions, not recipes)."""
    paths = bundled.names().values()
    assert len(paths) >= 10
    for path in paths:
        recipe.load(path)


def test_yaml_is_data_not_code(tmp_path):
    bad = tmp_path / "evil.yaml"
    bad.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(UserError, match="not valid YAML"):
        recipe.load(bad)


def test_dump_round_trips(tmp_path):
    r = recipe.from_dict({"name": "t", "model": {"n_layer": 2}}, ["train.lr=0.01"])
    path = tmp_path / "r.yaml"
    path.write_text(recipe.dump(r))
    assert recipe.load(path) == r
    assert recipe.non_defaults(r) == {"name": "t", "model.n_layer": 2, "train.lr": 0.01}


def test_presets_fill_switches_but_explicit_keys_win():
    llama = recipe.from_dict({"model": {"preset": "llama"}})
    assert (llama.model.positions, llama.model.norm, llama.model.mlp, llama.model.bias) == (
        "rope",
        "rmsnorm",
        "swiglu",
        False,
    )
    mixed = recipe.from_dict({"model": {"preset": "llama", "mlp": "relu2"}})
    assert mixed.model.mlp == "relu2" and mixed.model.positions == "rope"
    gpt2 = recipe.from_dict({}, ["model.preset=gpt2"])
    assert gpt2.model.positions == "learned" and gpt2.model.mlp == "gelu"


def test_mlp_takes_both_gelus_by_name():
    exact = recipe.from_dict({"model": {"preset": "gpt2", "mlp": "gelu_erf"}})
    assert exact.model.mlp == "gelu_erf" and exact.model.positions == "learned"
    assert recipe.from_dict({}, ["model.mlp=gelu_erf"]).model.mlp == "gelu_erf"
    assert recipe.from_dict({}).model.mlp == "gelu"  # GPT-2's tanh form, as before
    with pytest.raises(UserError, match="'model.mlp' must be one of 'gelu', 'gelu_erf'"):
        recipe.from_dict({"model": {"mlp": "gelu_tanh"}})


def test_bare_on_off_in_yaml_mean_on_off():
    assert recipe.from_dict({"train": {"compile": True}}).train.compile == "on"
    assert recipe.from_dict({}, ["train.compile=off"]).train.compile == "off"


@pytest.mark.parametrize(
    "name", ["..", ".", "", " ", "a/b", "a\\b", "a\nb", "tab\there", "x\udcff"]
)
def test_name_is_one_plain_folder_name(name):
    with pytest.raises(UserError, match="recipe key 'name' must be one plain folder name"):
        recipe.from_dict({"name": name})


def test_string_keys_take_set_text_as_written():
    zeros = "0" * 64
    r = recipe.from_dict({}, ["data.source=-", f"data.sha256={zeros}", "name=2024", "init=~"])
    assert (r.data.source, r.data.sha256, r.name, r.init) == ("-", zeros, "2024", "~")
    listed = recipe.from_dict({}, ["data.source=[a.txt, {path: b.txt, weight: 2}]"])
    assert listed.data.source == ["a.txt", {"path": "b.txt", "weight": 2}]
    assert recipe.from_dict({}, ["train.compile=on", "task.kind=sft"]).train.compile == "on"
    assert recipe.from_dict({}, ["sample.stop=[The end]"]).sample.stop == ["The end"]


def readme_key_table() -> dict[str, str]:
    """Each key the README's recipe table names (a row may name several of one section:
    `train.lr` / `min_lr_ratio`), with the default the row states."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    table = text.split("\n## Recipes\n", 1)[1].split("\n### ", 1)[0]
    rows = {}
    for line in table.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        keys = [k.strip("` ") for k in cells[0].split(" / ")]
        defaults = [d.strip("` ").replace("\\|", "|") for d in cells[1].split(" / ")]
        section = keys[0].rpartition(".")[0]
        names = [keys[0]] + [f"{section}.{k}" for k in keys[1:]]
        rows.update(zip(names, defaults, strict=True))  # a row states a default per key
    return rows


def _yaml_value(text: str):
    value = yaml.safe_load(text) if text else ""
    try:
        return float(value) if isinstance(value, str) else value  # YAML 1.1 reads 1e-3 as text
    except ValueError:
        return value


def test_readme_table_names_every_key_with_its_default():
    defaults = recipe.flat(recipe.Recipe())
    rows = readme_key_table()
    assert sorted(set(defaults) - set(rows)) == [], "keys the README's table does not name"
    assert sorted(set(rows) - set(defaults)) == [], "README rows that name no recipe key"
    for key, text in rows.items():
        value, default = _yaml_value(text), defaults[key]
        assert value == default and isinstance(value, bool) == isinstance(default, bool), key


def _leaf_fields(cls: type) -> list[dataclasses.Field]:
    out = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            out.extend(_leaf_fields(hint))
        elif f.name not in recipe.NOT_KEYS:
            out.append(f)
    return out


def test_every_key_carries_a_one_line_help():
    fields = _leaf_fields(recipe.Recipe) + list(dataclasses.fields(recipe.SourceConfig))
    assert len(fields) == len(recipe.all_keys()) + len(recipe.SOURCE_KEYS + recipe.HUB_KEYS)
    for f in fields:
        help = f.metadata.get("help", "")
        assert help and "\n" not in help and len(help) < 120, f.name


@pytest.mark.parametrize(
    "item, needle",
    [
        ("", "'data.source' must be a non-empty string"),
        ({"path": "x.txt", "split": "dev"}, "'data.source' must be a mapping with keys path"),
        ({"path": "hf:a/b", "weight": 0}, "'data.source.weight' must be a number > 0"),
        ({"path": "x.txt", "sha256": "abc"}, "'data.source.sha256' must be 64 hex digits"),
    ],
)
def test_a_source_is_checked_where_it_is_parsed(item, needle):
    with pytest.raises(UserError, match=re.escape(needle)):
        recipe.DataConfig(source=item).sources()


def test_a_source_string_takes_the_sections_text_field_and_sha256():
    sha = "a" * 64
    cfg = recipe.DataConfig(source="https://x/y.txt", text_field="body", sha256=sha)
    assert cfg.sources() == [recipe.SourceConfig("https://x/y.txt", sha256=sha, text_field="body")]
    sources = ["a.txt", {"path": "hf:o/n", "split": "test"}, {"path": "b.txt", "weight": 2}]
    listed = recipe.DataConfig(source=sources, sha256=sha).sources()
    assert listed == [
        recipe.SourceConfig("a.txt"),
        recipe.SourceConfig("hf:o/n", split="test"),
        recipe.SourceConfig("b.txt", weight=2.0),
    ]
    assert isinstance(listed[2].weight, float)  # the fingerprint writes 2.0 as before


def test_curation_keys_stay_out_of_recipe_yaml_at_their_defaults(tmp_path):
    """A run made before data.dedup, filters and decontaminate existed keeps its recipe.yaml
    byte for byte; a recipe that sets them writes them and reads back the same."""
    plain = recipe.dump(recipe.Recipe())
    assert "dedup" not in plain and "filters" not in plain and "decontaminate" not in plain
    r = recipe.from_dict({"data": {"dedup": "near", "filters": {"min_words": True}}})
    (tmp_path / "r.yaml").write_text(recipe.dump(r))
    again = recipe.load(tmp_path / "r.yaml")
    assert again.data == r.data and again.data.filters.on() == {"min_words": 50}
