"""The run folder: its name, --fresh, its lock and where a checkpoint's recipe is found."""

import pytest

from gptcli import run
from gptcli.console import UserError
from gptcli.recipe import Recipe


def test_lock_refuses_a_second_holder(tmp_path):
    with run.RunLock(tmp_path):
        with pytest.raises(UserError, match="in use by another gptcli process"):
            with run.RunLock(tmp_path):
                pass
    with run.RunLock(tmp_path):
        pass


def test_fresh_takes_the_first_free_name(tmp_path):
    base = tmp_path / "runs" / "x"
    assert run.fresh_folder(base) == base  # missing
    base.mkdir(parents=True)
    assert run.fresh_folder(base) == base  # empty
    (base / "recipe.yaml").write_text("")
    (tmp_path / "runs" / "x-2").mkdir()
    assert run.fresh_folder(base) == tmp_path / "runs" / "x-3"


def test_folder_is_run_dir_or_runs_name():
    assert str(run.folder(Recipe(name="a"))) == "runs/a"
    assert str(run.folder(Recipe(name="a", run_dir="/x/y"))) == "/x/y"


def test_a_checkpoint_outside_a_run_has_no_recipe(trained, tmp_path):
    ckpt = trained / "runs" / "mini" / "checkpoints" / "step-0000012"
    assert run.recipe_of(ckpt).sample.max_new_tokens == 20  # the run's recipe.yaml
    stray = tmp_path / "hf"
    stray.mkdir()
    (tmp_path / "recipe.yaml").write_text("sample: {max_new_tokens: 3}\n")  # an unrelated file
    assert run.recipe_of(stray) is None


def test_a_failed_start_leaves_no_run_folder(tmp_path, gptcli_inproc):
    from conftest import TINY_RECIPE, assert_one_line_error, write_recipe

    recipe = write_recipe(tmp_path, TINY_RECIPE.replace("builtin:stories", "missing.txt"))
    for command in ("tokenize", "pretrain"):
        assert_one_line_error(gptcli_inproc(command, str(recipe), cwd=tmp_path), "missing.txt")
        assert not (tmp_path / "runs").exists()  # nor the runs/ folder it made
    kept = tmp_path / "runs" / "mini"  # a folder the command did not create is never removed
    kept.mkdir(parents=True)
    assert_one_line_error(gptcli_inproc("pretrain", str(recipe), cwd=tmp_path), "missing.txt")
    assert kept.is_dir()


def test_a_finished_run_keeps_its_recipe_when_nothing_trains(trained, tmp_path):
    import shutil

    from conftest import gptcli

    shutil.copytree(trained / "runs" / "mini", tmp_path / "runs" / "mini")
    shutil.copy(trained / "mini.yaml", tmp_path)
    written = (tmp_path / "runs" / "mini" / "recipe.yaml").read_text()
    proc = gptcli("pretrain", "mini.yaml", "--set", "train.max_steps=6", cwd=tmp_path)
    assert proc.returncode == 0 and "already at step 12" in proc.stderr, proc.stderr
    assert (tmp_path / "runs" / "mini" / "recipe.yaml").read_text() == written


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_an_unavailable_device_is_refused_before_any_work(trained, tmp_path, gptcli_inproc):
    from conftest import TINY_RECIPE, assert_one_line_error, write_recipe

    recipe = write_recipe(tmp_path, TINY_RECIPE)
    proc = gptcli_inproc("pretrain", str(recipe), "--set", "train.device=cuda", cwd=tmp_path)
    assert_one_line_error(proc, "train.device", "cuda")
    assert not (tmp_path / "runs").exists()  # nothing tokenized
    finetune = write_recipe(
        tmp_path, f"name: ft\ninit: {trained / 'runs' / 'mini'}\ntask: lm\n", "ft.yaml"
    )
    proc = gptcli_inproc("finetune", str(finetune), "--set", "train.device=cuda", cwd=tmp_path)
    assert_one_line_error(proc, "train.device", "cuda")
    assert not (tmp_path / "runs").exists()
