import json

import pytest
from conftest import REPO, SHARED_DATA, assert_one_line_error, gptcli

from gptcli import load, tokenizer
from gptcli.console import UserError
from gptcli.eval import score


def inspect_json(path, cwd, *extra):
    proc = gptcli("inspect", str(path), "--json", *extra, cwd=cwd)
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
    memory = info["memory"]  # recorded before step 1
    assert memory["activation_checkpointing"] == "off" and memory["micro_batch"] == [4, 32]
    assert memory["total"] > memory["activations"]["off"] > memory["activations"]["every_block"]
    text = gptcli("inspect", "runs/mini", cwd=trained)
    assert "parameters" in text.stdout and "val_loss" in text.stdout
    assert "activations, checkpointing off (this run)" in text.stdout


def test_inspect_checkpoint_tokenizer_recipe_shards(trained):
    ckpt = inspect_json("runs/mini/checkpoints/step-0000006", trained)
    assert ckpt["kind"] == "checkpoint" and ckpt["step"] == 6 and ckpt["dtypes"] == ["F32"]
    tok = inspect_json("runs/mini/tokenizer.json", trained)
    assert tok["kind"] == "tokenizer" and "<|endoftext|>" in tok["special_tokens"]
    shards = inspect_json("runs/mini/data", trained)
    assert shards["kind"] == "shards" and shards["train"]["tokens"] > 0
    recipe = inspect_json(REPO / "recipes" / "tiny.yaml", trained)
    assert recipe["kind"] == "recipe" and recipe["params"]["total"] > 100_000
    mem, n = recipe["memory"], recipe["params"]["total"]
    assert mem["parameters"] + mem["gradients"] + mem["optimizer"] == 16 * n  # fp32 AdamW
    assert mem["total"] > 16 * n and mem["activation_checkpointing"] == "off"
    assert recipe["probe_tokens_per_s"] > 0 and recipe["estimated_train_s"] > 0


def test_inspect_bad_paths(tmp_path, gptcli_inproc):
    assert_one_line_error(gptcli_inproc("inspect", "nope", cwd=tmp_path), "no such file")
    (tmp_path / "notes.txt").write_text("hello")
    assert_one_line_error(gptcli_inproc("inspect", "notes.txt", cwd=tmp_path), "not a recipe")
    (tmp_path / "tok.json").write_text("{")
    assert_one_line_error(gptcli_inproc("inspect", "tok.json", cwd=tmp_path), "tok.json")


def test_inspect_run_provenance_throughput_and_curve(trained):
    info = inspect_json("runs/mini", trained)
    versions = info["newest_checkpoint"]["versions"]
    assert set(versions) >= {"gptcli", "torch", "tokenizers", "git"}
    commit = versions["git"].removesuffix("-dirty")
    assert commit == "unknown" or len(commit) == 40
    last = info["last_metrics"]
    assert last["mean_tokens_per_s"] > 0 and last["train_bpb"] > 0 and last["val_bpb"] > 0
    steps = [s for s, _ in info["curve"]["train"]]
    assert steps == sorted(steps) and steps[-1] == 12
    assert [s for s, _ in info["curve"]["val"]] == [6, 12]
    text = gptcli("inspect", "runs/mini", cwd=trained).stdout
    assert "step 12" in text and "o val" in text and "|" in text


def test_ascii_curve_places_points():
    from gptcli.inspect import ascii_curve

    lines = ascii_curve({"train": [[1, 4.0], [10, 2.0]], "val": [[10, 3.0]]}, width=10, height=5)
    assert lines[0].startswith("   4.000 |·")  # highest loss, first step: top left
    assert lines[4].startswith("   2.000 |") and lines[4].endswith("·")  # lowest: bottom right
    assert lines[2].endswith("o")  # val 3.0 half way up at the last step
    assert ascii_curve({"train": [], "val": []}) == []


def test_inspect_plot_png(trained, tmp_path, gptcli_inproc):
    pytest.importorskip("matplotlib", reason="matplotlib is the optional `plot` extra")
    out = tmp_path / "loss.png"
    proc = gptcli("inspect", "runs/mini", "--plot", str(out), "--json", cwd=trained)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(proc.stdout)["plot"] == str(out)
    proc = gptcli_inproc("inspect", "runs/mini/tokenizer.json", "--plot", str(out), cwd=trained)
    assert_one_line_error(proc, "--plot draws a run's loss curve")


def test_plot_without_matplotlib_says_how_to_install(monkeypatch):
    import sys

    from gptcli.inspect import plot_png

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import now raises ImportError
    with pytest.raises(UserError, match=r"pip install 'gptcli\[plot\]'"):
        plot_png({"train": [[1, 2.0]], "val": []}, "x.png", "t")


def test_inspect_tokenizer_text_view_and_bytes_per_token(trained):
    text = "Once upon a time, ünï 🙂"
    info = inspect_json("runs/mini", trained, "--text", text)
    assert info["kind"] == "tokenizer" and info["bytes_per_token_on"] == "--text"
    assert "".join(p["text"] for p in info["pieces"]) == text
    ids = tokenizer.load(trained / "runs" / "mini").encode(text, add_special_tokens=False).ids
    assert [p["id"] for p in info["pieces"]] == ids
    assert info["bytes_per_token"] == round(len(text.encode()) / len(ids), 3)
    sample = inspect_json("runs/mini/tokenizer.json", trained)
    assert sample["bytes_per_token_on"].endswith("val.bin") and sample["bytes_per_token"] > 1
    view = gptcli("inspect", "runs/mini/tokenizer.json", "--text", "Once upon", cwd=trained)
    assert view.returncode == 0 and "tokens:" in view.stdout


def test_inspect_shards_most_frequent(trained):
    info = inspect_json("runs/mini/data", trained)
    top = info["most_frequent"]
    counts = [t["count"] for t in top]
    assert counts == sorted(counts, reverse=True) and len(top) == 10
    assert all(isinstance(t["text"], str) for t in top)


def test_inspect_score(trained, tmp_path, gptcli_inproc):
    import math

    corpus = SHARED_DATA / "tinystories" / "TinyStories-valid.head.txt"
    small = tmp_path / "valid.txt"
    small.write_text(corpus.read_text()[:20000])
    info = inspect_json("runs/mini", trained, "--score", str(small))
    assert info["bytes"] == len(small.read_bytes())
    assert info["perplexity"] == pytest.approx(math.exp(info["loss"]), rel=1e-3)
    bpb = info["loss"] / math.log(2) * info["tokens"] / info["bytes"]
    assert info["bits_per_byte"] == pytest.approx(bpb, rel=1e-3)
    last = json.loads((trained / "runs" / "mini" / "metrics.jsonl").read_text().splitlines()[-1])
    assert abs(info["loss"] - last["val_loss"]) < 1.0  # same model, similar text
    with pytest.raises(UserError, match="nope.txt is not a file"):
        score(str(trained / "runs" / "mini"), "nope.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00")
    proc = gptcli_inproc("inspect", "runs/mini", "--score", str(tmp_path / "bin.txt"), cwd=trained)
    assert_one_line_error(proc, "not UTF-8")


def test_inspect_bad_checkpoints(trained, tmp_path, gptcli_inproc):
    import shutil

    src = trained / "runs" / "mini" / "checkpoints" / "step-0000012"
    ck = tmp_path / "ck"
    shutil.copytree(src, ck)
    weights = ck / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:300])
    assert_one_line_error(gptcli_inproc("inspect", str(ck)), "model.safetensors")
    with pytest.raises(UserError, match="model.safetensors: unreadable"):
        load.load(ck)  # what sample, finetune, --score and export read through
    shutil.copyfile(src / "model.safetensors", weights)
    cfg = json.loads((src / "config.json").read_text())
    (ck / "config.json").write_text(json.dumps({**cfg, "n_experts": 8}))
    assert_one_line_error(gptcli_inproc("inspect", str(ck)), "config.json", "n_experts")
    (ck / "config.json").write_text(json.dumps({**cfg, "format_version": 99}))
    assert_one_line_error(gptcli_inproc("inspect", str(ck)), "config.json", "format_version 99")
    (ck / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "norm_eps"}))
    old = gptcli_inproc("inspect", str(ck), "--json")
    assert old.returncode == 0 and "keys missing (norm_eps)" in old.stderr
    assert json.loads(old.stdout)["config"]["norm_eps"] == 1e-5
    shutil.copyfile(src / "config.json", ck / "config.json")
    (ck / "tokenizer.json").write_text('{"model": ')
    assert_one_line_error(gptcli_inproc("inspect", str(ck)), "tokenizer.json", "not a valid")
