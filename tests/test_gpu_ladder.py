"""benchmarks/gpu_ladder.py's pure parts, checked here because the script runs once, on a lent GPU,
with no second try: reading nanoGPT's log and a run's metrics, and the two benchmark-only
variants of gptcli it launches (benchmarks/gptcli_variant.py)."""

import json
from pathlib import Path

import pytest
import torch

from gptcli.device import Dist
from gptcli.model import GPT
from gptcli.recipe import PRESETS, ModelConfig

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

# nanoGPT's train.py output (commit 3adf61e), eval_iters=0 and log_interval=1
NANOGPT_LOG = """\
found vocab_size = 512 (inside /tmp/out/nanogpt-data/meta.pkl)
number of parameters: 0.13M
num decayed parameter tensors: 10, with 135,168 parameters
num non-decayed parameter tensors: 18, with 1,792 parameters
using fused AdamW: True
step 0: train loss nan, val loss nan
iter 0: loss 6.2521, time 31590.12ms, mfu -100.00%
iter 1: loss nan, time 34.03ms, mfu -100.00%
iter 2: loss 6.2543, time 41.60ms, mfu 0.00%
"""


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # as `python benchmarks/gpu_ladder.py` has it
    import gptcli_variant
    import gpu_ladder

    return gpu_ladder, gptcli_variant


def test_nanogpt_log_gives_each_iteration_and_every_parameter(bench):
    gpu_ladder, _ = bench
    assert gpu_ladder.nanogpt_times(NANOGPT_LOG) == [(0, 31590.12), (1, 34.03), (2, 41.6)]
    # gptcli's summary counts the same model (2 x 64, vocabulary 512, block 64) as 136,960
    assert gpu_ladder.nanogpt_params(NANOGPT_LOG) == 136_960


def test_run_figures_take_the_first_step_and_the_median_past_warm_up(bench, tmp_path):
    gpu_ladder, _ = bench
    records = [{"step": 1, "loss": 9.0, "tokens_per_s": 10.0, "mfu": 0.001, "elapsed_s": 31.5}]
    records += [
        {"step": s, "loss": 3.0, "tokens_per_s": 1000.0 + s, "mfu": 0.4, "elapsed_s": 32 + s}
        for s in range(2, 31)
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "memory.json").write_text(json.dumps({"total": 2**31, "peak_allocated": 2**30}))
    figures = gpu_ladder.run_figures(tmp_path)
    assert figures["first_step_s"] == 31.5 and figures["steps_logged"] == 30
    assert figures["tokens_per_s"] == 1025.5  # steps 21-30
    assert figures["estimate_gib"] == 2.0 and figures["peak_allocated_gib"] == 1.0
    assert gpu_ladder.run_figures(tmp_path / "never-started") == {"steps_logged": 0}


def test_whole_compile_variant_swaps_the_model_forward_in_and_out(bench, monkeypatch):
    _, variant = bench
    monkeypatch.setattr(torch, "compile", lambda fn: fn)  # what is swapped, not dynamo's 5 s
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=64)
    model = GPT(ModelConfig(**{**vars(cfg), **PRESETS["gpt2"]}))
    whole = variant.WholeModel(model)
    whole.use(True)
    assert "forward" in vars(model) and whole.on  # nn.Module.__call__ now runs the compiled one
    whole.use(False)
    assert "forward" not in vars(model) and not whole.on


def test_fsdp_variant_shards_one_process_and_leaves_the_rest_alone(bench):
    _, variant = bench
    cpu = torch.device("cpu")
    assert variant.choose_fsdp_alone("fsdp", 10**6, "adamw", Dist(), cpu) == "fsdp"
    assert variant.choose_fsdp_alone("auto", 10**6, "adamw", Dist(), cpu) == "none"
