"""Finding and describing checkpoints: newest, temp folders, versioned JSON, no torch."""

import json
import os
import shutil

import pytest
from conftest import loaded_by_import, save_tiny

from gptcli import checkpoint, checkpoint_tensors
from gptcli.console import UserError


def test_finding_and_describing_checkpoints_never_imports_torch():
    """`gptcli tokenize` and the run folder's bookkeeping stay fast: no torch behind them."""
    assert loaded_by_import("gptcli.checkpoint", "torch", "gptcli.checkpoint_tensors") == []


def test_newest_checkpoint_and_temp_folders_ignored(tiny_run):
    folder, *_ = tiny_run
    save_tiny(tiny_run, 1)
    save_tiny(tiny_run, 3)
    (folder / "checkpoints" / ".tmp-step-0000009-123").mkdir()
    incomplete = folder / "checkpoints" / "step-0000007"
    incomplete.mkdir()
    (incomplete / "model.safetensors").write_bytes(b"")
    assert checkpoint.newest_in_run(folder).name == "step-0000003"
    checkpoint_tensors.clean_stale_temps(folder)
    assert not (folder / "checkpoints" / ".tmp-step-0000009-123").exists()


def test_newest_under_picks_run_written_last(tiny_run, tmp_path_factory):
    folder, model, _ = tiny_run
    root = folder.parent
    old = save_tiny(tiny_run, 50)
    os.utime(old, (1, 1))
    (root / "other").mkdir(exist_ok=True)
    other_run = root / "other"
    snapshot = checkpoint_tensors.Snapshot(
        2, model.cfg, model.state_dict(), folder / "tokenizer.json"
    )
    other = checkpoint_tensors.save(other_run, snapshot)
    assert checkpoint.newest_under(root) == other


def test_corrupt_and_future_files_are_refused(tiny_run):
    path = save_tiny(tiny_run, 1)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(UserError, match="newer than this gptcli"):
        checkpoint_tensors.load(path)
    (path / "config.json").write_text(json.dumps({**config, "n_experts": 8}))
    with pytest.raises(UserError, match="unknown key 'n_experts'"):
        checkpoint_tensors.load(path)
    (path / "config.json").write_text(json.dumps(config))
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="unreadable safetensors"):
        checkpoint_tensors.load(path)
    with pytest.raises(UserError, match="unreadable safetensors"):
        checkpoint.tensor_shapes(path / "model.safetensors")


def test_missing_config_keys_use_defaults_with_warning(tiny_run, capsys):
    path = save_tiny(tiny_run, 1)
    config = json.loads((path / "config.json").read_text())
    del config["rope_theta"]
    (path / "config.json").write_text(json.dumps(config))
    assert checkpoint_tensors.load(path).config.rope_theta == 10000.0
    assert "rope_theta" in capsys.readouterr().err


def test_tensor_shapes_read_the_header(tiny_run):
    path = save_tiny(tiny_run, 1)
    shapes = checkpoint.tensor_shapes(path / "model.safetensors")
    assert shapes["wte.weight"] == ([280, 16], "F32")
    assert "lm_head.weight" not in shapes  # tied to wte.weight: stored once


# --------------------------------------------------------------------------- config.json's keys


@pytest.fixture(scope="module")
def saved_once(tmp_path_factory):
    """One tiny checkpoint (step 7) for the module: each test edits a copy (see ckpt)."""
    from gptcli import tokenizer
    from gptcli.model import GPT
    from gptcli.recipe import ModelConfig

    folder = tmp_path_factory.mktemp("saved")
    tokenizer.save(tokenizer.train(["hello world"] * 10, 280, ["<|endoftext|>"]), folder / "tok")
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=280))
    snapshot = checkpoint_tensors.Snapshot(
        7, model.cfg, model.state_dict(), folder / "tok", state={"tokens_seen": 7}
    )
    return checkpoint_tensors.save(folder, snapshot)


@pytest.fixture
def ckpt(saved_once, tmp_path):
    """A copy of the module's checkpoint, in a run folder of its own."""
    copy = tmp_path / "checkpoints" / saved_once.name
    shutil.copytree(saved_once, copy)
    return copy


# One bad value for every key config.json holds: a wrong type, an unknown value or an
# impossible shape, each refused naming the file and the key.
BAD_CONFIG = {
    "format_version": "1",
    "n_layer": "two",
    "n_head": 0,
    "n_embd": 2.5,
    "block_size": -1,
    "vocab_size": 0,
    "preset": "gpt3",
    "positions": "banana",
    "norm": 5,
    "mlp": "tanh",
    "mlp_hidden": -4,
    "bias": "no",
    "tie_embeddings": "no",
    "qk_norm": 1,
    "zero_init_proj": None,
    "dropout": 1.5,
    "rope_theta": None,
    "norm_eps": "x",
    "n_classes": -1,
    "task": 5,
    "lora": "yes",
    "gptcli_version": 3,
}
# the values the user tried, on top of one per key
MORE_BAD = [("n_layer", 2.5), ("rope_theta", float("inf")), ("norm_eps", 0.0)]


def _with_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, **changes}))
    return path


def test_every_config_key_has_a_bad_value_tested(ckpt):
    written = json.loads((ckpt / "config.json").read_text())
    known = checkpoint.MODEL_KEYS | {"format_version", "task", "lora", "gptcli_version"}
    assert set(written) <= set(BAD_CONFIG) == known


@pytest.mark.parametrize(("key", "value"), [*BAD_CONFIG.items(), *MORE_BAD])
def test_a_bad_config_value_is_refused_naming_file_and_key(ckpt, key, value):
    path = _with_config(ckpt, **{key: value})
    for read in (checkpoint.model_config_from_json, checkpoint.read_config):
        with pytest.raises(UserError) as e:
            read(path / "config.json")
        assert str(path / "config.json") in str(e.value) and key in str(e.value)
    with pytest.raises(UserError, match=key):
        checkpoint_tensors.load(path)


@pytest.mark.parametrize("key", checkpoint.SHAPE_KEYS)
def test_a_missing_shape_key_is_refused(ckpt, key):
    path = ckpt
    config = json.loads((path / "config.json").read_text())
    del config[key]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=f"missing key '{key}'"):
        checkpoint_tensors.load(path)


@pytest.mark.parametrize(
    ("task", "needle"),
    [
        ({"kind": "sentiment"}, "task.kind"),
        ({"format": "single"}, "task.kind"),
        ({"kind": "classify", "label_names": "ab"}, "task.label_names"),
        ({"kind": "classify", "lm_weight": -1}, "task.lm_weight"),
        ({"kind": "sft", "template": 7}, "task.template"),
        ({"kind": "lm", "heads": 2}, "task.heads"),
    ],
)
def test_a_bad_task_entry_is_refused(ckpt, task, needle):
    path = _with_config(ckpt, task=task)
    with pytest.raises(UserError, match=needle):
        checkpoint.read_info(path)


def test_task_and_lora_entries_read_back_typed(ckpt):
    lora = {"rank": 2, "alpha": 4, "dropout": 0.0, "targets": ["qkv"], "base_vocab": 280}
    lora["base"] = {"path": "runs/base/checkpoints/step-0000001", "sha256": "ab" * 32}
    task = {"kind": "classify", "format": "pair", "label_names": ["no", "yes"]}
    path = _with_config(ckpt, task=task, lora=lora)
    info = checkpoint.read_info(path)
    assert info["task"] == task and info["lora"] == {**lora, "alpha": 4.0}
    for bad, needle in [
        ({**lora, "rank": 0}, "lora.rank"),
        ({**lora, "targets": ["attn"]}, "lora.targets"),
        ({**lora, "base": {"path": 3}}, "lora.base"),
        ({k: v for k, v in lora.items() if k != "base_vocab"}, "lora"),
    ]:
        _with_config(path, lora=bad)
        with pytest.raises(UserError, match=needle):
            checkpoint.read_info(path)


# --------------------------------------------------------------------------- state.json


def _with_state(path, state):
    (path / "state.json").write_text(json.dumps(state))
    return path


V1_STATE = {
    "format_version": 1,
    "step": 1,
    "tokens_seen": 32,
    "elapsed_s": 0.5,
    "data_position": 1,
    "metrics": {"loss": 5.0},
    "train": {"batch_size": 4},
    "versions": {"gptcli": "0.1"},
}


def test_version_1_state_reads_without_the_later_keys_and_silently(ckpt, capsys):
    path = _with_state(ckpt, V1_STATE)
    assert checkpoint.read_state(path) == V1_STATE  # no global_batch: no rescaled grad_accum
    assert capsys.readouterr().err == ""


def test_version_1_state_reads_with_the_later_keys(ckpt, capsys):
    state = {**V1_STATE, "global_batch": 4, "auto": {"device": "cpu", "dtype": "fp32"}}
    path = _with_state(ckpt, state)
    assert checkpoint.read_state(path) == state
    assert capsys.readouterr().err == ""


def test_state_is_written_as_version_2_and_a_newer_one_is_refused(ckpt, gptcli_inproc):
    path = ckpt
    assert checkpoint.read_state(path)["format_version"] == checkpoint.STATE_VERSION == 2
    config = json.loads((path / "config.json").read_text())
    assert config["format_version"] == checkpoint.CONFIG_VERSION == 1  # unchanged
    _with_state(path, {**V1_STATE, "format_version": 3})
    with pytest.raises(UserError, match="format_version 3 is newer"):
        checkpoint.read_state(path)
    from conftest import assert_one_line_error

    proc = gptcli_inproc("sample", "-c", str(path), "-p", "hi")
    assert_one_line_error(proc, "state.json", "format_version 3")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("step", "one"),
        ("step", -1),
        ("tokens_seen", 1.5),
        ("elapsed_s", "x"),
        ("data_position", None),
        ("metrics", []),
        ("train", "adamw"),
        ("versions", 1),
        ("optimizer_param_groups", {}),
        ("global_batch", 0),
        ("auto", "cpu"),
        ("source", 1),
    ],
)
def test_a_bad_state_value_is_refused_naming_file_and_key(ckpt, key, value):
    path = _with_state(ckpt, {**V1_STATE, "format_version": 2, key: value})
    with pytest.raises(UserError, match=key) as e:
        checkpoint.read_state(path)
    assert str(path / "state.json") in str(e.value)


def test_a_state_without_step_takes_the_folders(ckpt, capsys):
    path = _with_state(ckpt, {"format_version": 2})
    assert checkpoint.read_state(path)["step"] == 7
    assert "'step'" in capsys.readouterr().err


def test_a_bad_optimizer_index_is_refused(ckpt):
    path = ckpt
    (path / checkpoint_tensors.OPTIM_INDEX).write_text(json.dumps({"world": 0, "tensors": {}}))
    with pytest.raises(UserError, match="world"):
        checkpoint_tensors.OptimizerState(path)
    index = {"world": 1, "tensors": {"optim0.0.exp_avg": {"shape": "16", "sharded": False}}}
    (path / checkpoint_tensors.OPTIM_INDEX).write_text(json.dumps(index))
    with pytest.raises(UserError, match="tensors"):
        checkpoint_tensors.OptimizerState(path)


# --------------------------------------------------------------------------- every command


def _commands(ckpt, tmp_path):
    """Each command that reads a checkpoint, with one bad config.json key of its own."""
    c = str(ckpt)
    recipe = tmp_path / "ft.yaml"
    recipe.write_text(f"name: ft\ninit: {c}\ndata:\n  source: builtin:stories\n")
    return [
        (("sample", "-c", c, "--prompt", "Once"), "n_head", 0),
        (("chat", "-c", c), "norm_eps", "x"),
        (("serve", "-c", c, "--port", "0"), "positions", "banana"),
        (("eval", c, "--tasks", "gptcli_sst2", "--limit", "2"), "tie_embeddings", "no"),
        (("export", c, "--format", "hf", "--out", str(tmp_path / "hf")), "task", 5),
        (("finetune", str(recipe)), "n_layer", 2.5),
        (("inspect", c), "rope_theta", None),
    ]


@pytest.mark.parametrize("which", range(7))
def test_every_command_refuses_a_bad_config_key(ckpt, tmp_path, gptcli_inproc, which):
    from conftest import assert_one_line_error

    args, key, value = _commands(ckpt, tmp_path)[which]
    _with_config(ckpt, **{key: value})
    proc = gptcli_inproc(*args, input="", cwd=tmp_path)
    assert_one_line_error(proc, str(ckpt / "config.json"), f"'{key}")
    assert not (tmp_path / "hf").exists() and not (tmp_path / "runs").exists()


def test_resume_refuses_a_bad_state_key(trained_copy, gptcli_inproc):
    from conftest import assert_one_line_error

    newest = checkpoint.newest_in_run(trained_copy / "runs" / "mini")
    state = json.loads((newest / "state.json").read_text())
    _with_state(newest, {**state, "global_batch": "4"})
    before = sorted(p.name for p in newest.parent.iterdir())
    args = ("pretrain", "mini.yaml", "--set", "train.max_steps=14")
    proc = gptcli_inproc(*args, cwd=trained_copy)
    where = "runs/mini/checkpoints/step-0000012/state.json"
    assert_one_line_error(proc, where, "'global_batch'", "an integer")
    assert sorted(p.name for p in newest.parent.iterdir()) == before
