"""Finding and describing checkpoints: newest, temp folders, versioned JSON, no torch."""

import json
import os

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
