"""Checkpoint tensors: weights, optimizer and RNG state round-trip through a save, atomically."""

import json
import os

import torch
from conftest import save_tiny

from gptcli import checkpoint, checkpoint_tensors


def test_round_trip_weights_optimizer_rng(tiny_run):
    folder, model, opt = tiny_run
    torch.manual_seed(42)
    path = save_tiny(tiny_run, 5)
    expected_rand = torch.rand(3)
    loaded = checkpoint_tensors.load(folder)
    assert loaded.path == path and loaded.state["step"] == 5
    again = checkpoint_tensors.build_model(loaded)
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert again.lm_head.weight is again.wte.weight
    opt2 = torch.optim.AdamW(again.parameters(), lr=1e-3)
    extra = checkpoint_tensors.load_trainer_tensors(path)
    saved = checkpoint_tensors.OptimizerState(path)
    checkpoint_tensors.restore_optimizers([opt2], saved, loaded.state["optimizer_param_groups"])
    for p1, p2 in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(opt.state[p1]["exp_avg"], opt2.state[p2]["exp_avg"])
        assert torch.equal(opt.state[p1]["exp_avg_sq"], opt2.state[p2]["exp_avg_sq"])
    checkpoint_tensors.restore_rng(extra)
    assert torch.equal(torch.rand(3), expected_rand)


def test_never_pickled(tiny_run):
    path = save_tiny(tiny_run, 1)
    for f in path.iterdir():
        assert f.suffix in (".safetensors", ".json"), f


def test_existing_checkpoint_is_not_overwritten(tiny_run):
    path = save_tiny(tiny_run, 2)
    before = (path / "model.safetensors").stat().st_mtime_ns
    save_tiny(tiny_run, 2)
    assert (path / "model.safetensors").stat().st_mtime_ns == before


def test_a_snapshot_without_optimizers_saves_weights_and_state(tiny_run):
    folder, model, _ = tiny_run
    snapshot = checkpoint_tensors.Snapshot(
        4, model.cfg, model.state_dict(), folder / "tokenizer.json", state={"tokens_seen": 9}
    )
    path = checkpoint_tensors.save(folder / "other", snapshot)
    state = json.loads((path / "state.json").read_text())
    assert state == {"format_version": checkpoint.STATE_VERSION, "tokens_seen": 9, "step": 4}
    assert checkpoint_tensors.OptimizerState(path).names() == []
    assert checkpoint_tensors.load_trainer_tensors(path).keys() == {"rng.torch"}


def _edited(ckpt, tmp_path, **changes):
    """A copy of ckpt whose config.json disagrees with its weights."""
    import shutil

    copy = tmp_path / f"edited-{'-'.join(changes)}"
    shutil.copytree(ckpt, copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, **changes}))
    return copy


def test_config_that_disagrees_with_weights_names_the_tensor_and_shapes(
    tiny_run, tmp_path, gptcli_inproc
):
    from conftest import assert_one_line_error

    ckpt = save_tiny(tiny_run, 1)
    wider = _edited(ckpt, tmp_path, n_embd=32)
    proc = gptcli_inproc("sample", "-c", str(wider), "-p", "hi")
    assert_one_line_error(proc, "'wte.weight'", "[280, 16]", "[280, 32]", "config.json")
    out = tmp_path / "merged"
    proc = gptcli_inproc("export", str(wider), "--format", "gptcli", "--out", str(out))
    assert_one_line_error(proc, "'wte.weight'", "[280, 16]", "[280, 32]")
    assert not out.exists()
    bigger_vocab = _edited(ckpt, tmp_path, vocab_size=300)
    proc = gptcli_inproc("sample", "-c", str(bigger_vocab), "-p", "hi")
    assert_one_line_error(proc, "'wte.weight'", "[280, 16]", "[300, 16]")


def test_safetensors_files_follow_the_umask(tiny_run, tmp_path):
    from gptcli import hf_format, load

    old = os.umask(0o022)
    try:
        ckpt = save_tiny(tiny_run, 2)
        merged = checkpoint_tensors.export_gptcli(load.load(ckpt), tmp_path / "merged")
        hf = hf_format.export_hf(load.load(ckpt), tmp_path / "hf")
        os.umask(0o027)
        group_only = save_tiny(tiny_run, 3)
    finally:
        os.umask(old)
    for path in (ckpt, merged, hf):
        for f in path.glob("*.safetensors"):
            assert f.stat().st_mode & 0o777 == 0o644, f
    assert (group_only / "model.safetensors").stat().st_mode & 0o777 == 0o640
