"""The plan of a run (gptcli.plan): `pretrain/finetune RECIPE --dry-run` print it, train
nothing and write nothing into the run folder; `--on GPU` estimates from the package's table."""

import json
import re

import pytest
import torch
from conftest import REPO, assert_one_line_error, files_of, gptcli, write_recipe

from gptcli.device import CUDA_BF16_PEAKS
from gptcli.plan import CARDS

PLAN_KEYS = {
    "params",
    "flops_per_token",
    "tokens_per_step",
    "tokens_total",
    "flops_total",
    "memory",
    "memory_totals",
    "memory_available",
    "refusal",
    "auto",
    "data",
    "step_s",
    "estimated_train_s",
}


def dry_run(command, recipe, cwd, *extra):
    proc = gptcli(command, str(recipe), "--dry-run", "--json", "--quiet", *extra, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_dry_run_plans_without_tokenizing_or_writing(tmp_path):
    recipe = write_recipe(tmp_path)
    plan = dry_run("pretrain", recipe, tmp_path, "--on", "h100")
    assert not (tmp_path / "runs").exists()  # no run folder, no shards, no lock
    assert PLAN_KEYS <= plan.keys() and plan["command"] == "pretrain"
    assert plan["data"]["status"] == "the tokenize step would run first"
    assert plan["data"]["train_tokens"] == "unknown until tokenized"
    assert plan["data"]["corpus_bytes"] == 300_000  # builtin_mb: 0.3
    assert plan["tokens_per_step"] == 4 * 32 and plan["tokens_total"] == 12 * 4 * 32
    totals = plan["memory_totals"]
    assert totals["off"] > totals["every_block"] > 0
    assert plan["auto"] == {"device": "cpu", "dtype": plan["auto"]["dtype"], "compile": False}
    assert plan["step_s"] > 0 and plan["estimated_train_s"] > 0 and plan["refusal"] is None
    # --on: tokens over the card's peak times its MFU, from the package's table
    gpu, card = plan["on"], CARDS["h100"]
    tokens_per_s = CUDA_BF16_PEAKS[card.peak_key] * card.mfu / plan["flops_per_token"]
    assert gpu["estimated_train_s"] == round(plan["tokens_total"] / tokens_per_s, 3)
    assert gpu["fits"] and gpu["dtype"] == "bf16"
    text = gptcli("pretrain", str(recipe), "--dry-run", "--on", "h200", cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    for needle in ("parameters", "tokens in all", "checkpointing every block", "NVIDIA H200"):
        assert needle in text.stdout, text.stdout
    assert not (tmp_path / "runs").exists()


def test_dry_run_on_a_tokenized_run_leaves_it_unchanged(trained):
    before = files_of(trained / "runs" / "mini")
    plan = dry_run("pretrain", "mini.yaml", trained)
    assert plan["data"]["status"] == "tokenized" and plan["data"]["train_tokens"] > 0
    inspected = json.loads(gptcli("inspect", "mini.yaml", "--json", cwd=trained).stdout)
    assert inspected["params"] == plan["params"]  # one estimator for both
    assert inspected["memory_totals"] == plan["memory_totals"]
    assert files_of(trained / "runs" / "mini") == before


def test_finetune_dry_run_plans_init_model(trained):
    recipe = write_recipe(
        trained,
        "name: mini-plan-ft\ninit: runs/mini\ndata:\n  source: builtin:stories\n"
        "  builtin_mb: 0.1\ntrain:\n  batch_size: 2\n  max_steps: 4\n",
        "plan-ft.yaml",
    )
    plan = dry_run("finetune", recipe, trained)
    checkpoint = json.loads(gptcli("inspect", "runs/mini", "--json", cwd=trained).stdout)
    assert plan["command"] == "finetune"
    assert plan["params"] == checkpoint["newest_checkpoint"]["params"]
    assert plan["tokens_per_step"] == 2 * 32  # init's block_size, the recipe's batch
    assert not (trained / "runs" / "mini-plan-ft").exists()


def test_plan_of_a_run_that_cannot_fit_states_the_refusal(tmp_path, gptcli_inproc):
    recipe = write_recipe(tmp_path)
    huge = ("--set", "train.batch_size=50000000")
    plan = dry_run("pretrain", recipe, tmp_path, *huge)
    assert plan["memory_fits"] is False and "train.memory_check" in plan["refusal"]
    assert plan["step_s"] is None  # steps that cannot fit are not timed
    proc = gptcli_inproc("pretrain", str(recipe), "--dry-run", "--on", "a100", cwd=tmp_path)
    assert_one_line_error(proc, "--on a100", "h100")


def test_gpu_figures_match_benchmarks_readme():
    """CARDS' MFU and the datasheet peaks are the ones benchmarks/README.md records."""
    text = (REPO / "benchmarks" / "README.md").read_text()
    section = text.split("## Plan estimates", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (h\d+) \| ([\d.]+) \| ([\d.]+) % \|", section, re.M)
    assert {name for name, _, _ in rows} == set(CARDS)
    for name, peak_tflops, mfu_pct in rows:
        card = CARDS[name]
        assert CUDA_BF16_PEAKS[card.peak_key] == float(peak_tflops) * 1e12
        assert card.mfu == float(mfu_pct) / 100


@pytest.mark.skipif(torch.cuda.is_available(), reason="plans a GPU recipe where no GPU is")
def test_gpu_recipe_planned_without_a_gpu_still_estimates_the_card(tmp_path):
    recipe = write_recipe(tmp_path)
    plan = dry_run("pretrain", recipe, tmp_path, "--set", "train.device=cuda", "--on", "h200")
    assert "no CUDA GPU" in plan["refusal"] and plan["step_s"] is None
    assert plan["auto"]["device"] == "cuda" and plan["on"]["tokens_per_s"] > 0
    assert not (tmp_path / "runs").exists()
