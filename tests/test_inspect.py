import json

from conftest import REPO, assert_one_line_error, gptcli


def inspect_json(path, cwd):
    proc = gptcli("inspect", str(path), "--json", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_inspect_run(trained):
    info = inspect_json("runs/mini", trained)
    assert info["kind"] == "run"
    assert info["non_default_keys"]["model.n_layer"] == 2
    assert info["data"]["corpus"]["source"] == "builtin:stories"
    assert info["checkpoints"] == ["step-0000006", "step-0000012"]
    ckpt = info["newest_checkpoint"]
    assert ckpt["step"] == 12 and ckpt["tokenizer"]["vocab_size"] <= 400
    assert info["last_metrics"]["step"] == 12 and "val_loss" in info["last_metrics"]
    params = ckpt["params"]
    assert params["total"] == sum(v for k, v in params.items() if k != "total")
    assert params["wte"] == 32 * ckpt["config"]["vocab_size"]
    assert ckpt["versions"]["torch"]
    text = gptcli("inspect", "runs/mini", cwd=trained)
    assert "parameters" in text.stdout and "val_loss" in text.stdout


def test_inspect_checkpoint_tokenizer_recipe_shards(trained):
    ckpt = inspect_json("runs/mini/checkpoints/step-0000006", trained)
    assert ckpt["kind"] == "checkpoint" and ckpt["step"] == 6 and ckpt["dtypes"] == ["F32"]
    tok = inspect_json("runs/mini/tokenizer.json", trained)
    assert tok["kind"] == "tokenizer" and "<|endoftext|>" in tok["special_tokens"]
    shards = inspect_json("runs/mini/data", trained)
    assert shards["kind"] == "shards" and shards["train"]["tokens"] > 0
    recipe = inspect_json(REPO / "recipes" / "tiny.yaml", trained)
    assert recipe["kind"] == "recipe" and recipe["params"]["total"] > 100_000


def test_inspect_bad_paths(tmp_path):
    assert_one_line_error(gptcli("inspect", "nope", cwd=tmp_path), "no such file")
    (tmp_path / "notes.txt").write_text("hello")
    assert_one_line_error(gptcli("inspect", "notes.txt", cwd=tmp_path), "not a recipe")
    (tmp_path / "tok.json").write_text("{")
    assert_one_line_error(gptcli("inspect", "tok.json", cwd=tmp_path), "tok.json")
