import json
import os

import pytest
import torch

from gptcli import checkpoint, tokenizer
from gptcli.console import UserError
from gptcli.model import GPT
from gptcli.recipe import ModelConfig


@pytest.fixture
def run(tmp_path):
    tok = tokenizer.train(["hello world"] * 10, 280, ["<|endoftext|>"])
    tokenizer.save(tok, tmp_path / "tokenizer.json")
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=280))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.long))[1].backward()
    opt.step()
    return tmp_path, model, opt


def save(run, step):
    folder, model, opt = run
    return checkpoint.save(
        folder, step, model, [opt], {"tokens_seen": step}, folder / "tokenizer.json"
    )


def test_round_trip_weights_optimizer_rng(run):
    folder, model, opt = run
    torch.manual_seed(42)
    path = save(run, 5)
    expected_rand = torch.rand(3)
    loaded = checkpoint.load(folder)
    assert loaded.path == path and loaded.state["step"] == 5
    again = checkpoint.build_model(loaded)
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert again.lm_head.weight is again.wte.weight
    opt2 = torch.optim.AdamW(again.parameters(), lr=1e-3)
    extra = checkpoint.load_trainer_tensors(path)
    saved = checkpoint.OptimizerState(path)
    checkpoint.restore_optimizers([opt2], saved, loaded.state["optimizer_param_groups"])
    for p1, p2 in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(opt.state[p1]["exp_avg"], opt2.state[p2]["exp_avg"])
        assert torch.equal(opt.state[p1]["exp_avg_sq"], opt2.state[p2]["exp_avg_sq"])
    checkpoint.restore_rng(extra)
    assert torch.equal(torch.rand(3), expected_rand)


def test_never_pickled(run):
    path = save(run, 1)
    for f in path.iterdir():
        assert f.suffix in (".safetensors", ".json"), f


def test_newest_checkpoint_and_temp_folders_ignored(run):
    folder, *_ = run
    save(run, 1)
    save(run, 3)
    (folder / "checkpoints" / ".tmp-step-0000009-123").mkdir()
    incomplete = folder / "checkpoints" / "step-0000007"
    incomplete.mkdir()
    (incomplete / "model.safetensors").write_bytes(b"")
    assert checkpoint.newest_in_run(folder).name == "step-0000003"
    checkpoint.clean_stale_temps(folder)
    assert not (folder / "checkpoints" / ".tmp-step-0000009-123").exists()


def test_existing_checkpoint_is_not_overwritten(run):
    path = save(run, 2)
    before = (path / "model.safetensors").stat().st_mtime_ns
    save(run, 2)
    assert (path / "model.safetensors").stat().st_mtime_ns == before


def test_newest_under_picks_run_written_last(run, tmp_path_factory):
    folder, *_ = run
    root = folder.parent
    old = save(run, 50)
    os.utime(old, (1, 1))
    (root / "other").mkdir(exist_ok=True)
    other_run = root / "other"
    other = checkpoint.save(other_run, 2, run[1], None, {}, folder / "tokenizer.json")
    assert checkpoint.newest_under(root) == other


def test_corrupt_and_future_files_are_refused(run):
    path = save(run, 1)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(UserError, match="newer than this gptcli"):
        checkpoint.load(path)
    (path / "config.json").write_text(json.dumps({**config, "n_experts": 8}))
    with pytest.raises(UserError, match="unknown key 'n_experts'"):
        checkpoint.load(path)
    (path / "config.json").write_text(json.dumps(config))
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="unreadable safetensors"):
        checkpoint.load(path)


def test_missing_config_keys_use_defaults_with_warning(run, capsys):
    path = save(run, 1)
    config = json.loads((path / "config.json").read_text())
    del config["rope_theta"]
    (path / "config.json").write_text(json.dumps(config))
    assert checkpoint.load(path).config.rope_theta == 10000.0
    assert "rope_theta" in capsys.readouterr().err


def _edited(ckpt, tmp_path, **changes):
    """A copy of ckpt whose config.json disagrees with its weights."""
    import shutil

    copy = tmp_path / f"edited-{'-'.join(changes)}"
    shutil.copytree(ckpt, copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, **changes}))
    return copy


def test_config_that_disagrees_with_weights_names_the_tensor_and_shapes(
    run, tmp_path, gptcli_inproc
):
    from conftest import assert_one_line_error

    ckpt = save(run, 1)
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


def test_safetensors_files_follow_the_umask(run, tmp_path):
    from gptcli import interop

    old = os.umask(0o022)
    try:
        ckpt = save(run, 2)
        merged = interop.export_gptcli(interop.load(ckpt), tmp_path / "merged")
        hf = interop.export_hf(interop.load(ckpt), tmp_path / "hf")
        os.umask(0o027)
        group_only = save(run, 3)
    finally:
        os.umask(old)
    for path in (ckpt, merged, hf):
        for f in path.glob("*.safetensors"):
            assert f.stat().st_mode & 0o777 == 0o644, f
    assert (group_only / "model.safetensors").stat().st_mode & 0o777 == 0o640
