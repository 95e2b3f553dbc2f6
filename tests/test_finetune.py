import json

from conftest import SHARED_DATA, assert_one_line_error, gptcli, write_recipe

FINETUNE = """\
name: mini-ft
init: runs/mini
task: lm
data:
  source: {source}
train:
  batch_size: 4
  max_steps: 6
  warmup_steps: 1
  eval_every: 3
  eval_batches: 2
  save_every: 0
  lr: 3.0e-4
"""


def test_finetune_lm_continues_from_checkpoint_with_its_tokenizer(trained, tmp_path):
    corpus = tmp_path / "new.txt"
    corpus.write_text("The robot liked to paint the sky.<|endoftext|>" * 200)
    recipe = write_recipe(trained, FINETUNE.format(source=corpus), "ft.yaml")
    proc = gptcli("finetune", str(recipe), "--json", "--quiet", cwd=trained)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    run = trained / "runs" / "mini-ft"
    assert summary["run_dir"] == "runs/mini-ft" and summary["step"] == 6
    base_tok = (trained / "runs" / "mini" / "tokenizer.json").read_bytes()
    assert (run / "tokenizer.json").read_bytes() == base_tok
    assert (run / "checkpoints" / "step-0000006" / "tokenizer.json").read_bytes() == base_tok
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    pretrained_loss = json.loads(
        (trained / "runs" / "mini" / "metrics.jsonl").read_text().splitlines()[-1]
    )["loss"]
    assert first["loss"] < pretrained_loss + 2.0  # it starts from the trained weights, not noise
    assert (
        gptcli(
            "sample", "-c", str(run), "--prompt", "The robot", "--max-new-tokens", "5", cwd=trained
        ).returncode
        == 0
    )


def test_finetune_on_real_corpus_path(trained):
    source = SHARED_DATA / "tinystories" / "TinyStories_all_data-data00.head.txt"
    recipe = write_recipe(
        trained, FINETUNE.format(source=source).replace("mini-ft", "mini-ts"), "ts.yaml"
    )
    proc = gptcli("finetune", str(recipe), "--quiet", "--json", cwd=trained)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["val_loss"] > 0


def test_finetune_bad_init(trained):
    recipe = write_recipe(
        trained, FINETUNE.format(source="x.txt").replace("runs/mini", "runs/none"), "bad.yaml"
    )
    assert_one_line_error(gptcli("finetune", str(recipe), cwd=trained), "runs/none")
    recipe.write_text(FINETUNE.format(source="x.txt").replace("init: runs/mini\n", ""))
    assert_one_line_error(gptcli("finetune", str(recipe), cwd=trained), "init")
