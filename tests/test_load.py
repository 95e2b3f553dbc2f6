"""The one `load`: any model a user names (checkpoint, run folder, HF folder, or nothing),
with full weights; and training, which resumes its own checkpoints, never reaches HF code."""

import shutil

import pytest
import torch
from conftest import loaded_by_import, save_tiny

from gptcli import checkpoint_tensors, hf_format, load
from gptcli.console import UserError


def test_no_path_means_the_newest_run_under_runs(tiny_run, monkeypatch):
    folder, model, opt = tiny_run
    monkeypatch.chdir(folder)
    with pytest.raises(UserError, match=r"no complete checkpoint under \./runs"):
        load.resolve(None)
    run = folder / "runs" / "mini"
    run.mkdir(parents=True)
    shutil.copyfile(folder / "tokenizer.json", run / "tokenizer.json")
    newest = save_tiny((run, model, opt), 3)
    assert load.resolve(None).resolve() == newest.resolve()


def test_a_run_folder_and_an_hf_folder_load_the_same_weights(tiny_run, tmp_path):
    folder, model, _ = tiny_run
    ckpt = save_tiny(tiny_run, 2)
    assert load.resolve(folder) == ckpt  # a run folder names its newest checkpoint
    ours = load.load(folder)
    assert ours.path == ckpt and ours.state["step"] == 2
    hf = hf_format.export_hf(ours, tmp_path / "hf")
    assert load.resolve(hf) == hf  # an HF folder is read as it is
    theirs = load.load(hf)
    assert theirs.state == {"step": 0, "source": "hf"}
    assert theirs.config.n_embd == model.cfg.n_embd
    assert torch.equal(theirs.weights["wte.weight"], model.wte.weight)
    x = torch.arange(8).unsqueeze(0)
    with torch.no_grad():
        a = checkpoint_tensors.build_model(ours)(x)[0]
        b = checkpoint_tensors.build_model(theirs)(x)[0]
    assert torch.allclose(a, b, atol=1e-5)


def test_training_never_imports_the_hf_or_gguf_code():
    """A LoRA run's base may be an HF folder: finetune hands the trainer `load.load` to read
    it, so the trainer itself resumes through checkpoint_tensors alone."""
    heavy = ("gptcli.hf_format", "gptcli.gguf_format", "gptcli.load")
    assert loaded_by_import("gptcli.pretrain", *heavy) == []  # pretrain imports the trainer
    assert loaded_by_import("gptcli.finetune", *heavy) == ["gptcli.hf_format", "gptcli.load"]
