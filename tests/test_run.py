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
