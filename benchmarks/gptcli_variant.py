"""gptcli's CLI with one benchmark-only change, for gpu_ladder.py's baselines; no recipe key
gives either, on purpose:

  whole-compile  torch.compile over the whole model's forward (embeddings, every block and the
                 loss in one graph: what the trainer compiled before it compiled regions),
                 in place of the trainer's compiled regions (autotune.CompiledRegions)
  fsdp-1         train.parallel=fsdp shards over a 1-rank mesh, where the trainer runs a lone
                 process unwrapped ("nothing to shard"): FSDP2's gathers, casts and
                 reduce-scatters on one GPU, so its cost and memory show without a second one

    python benchmarks/gptcli_variant.py whole-compile pretrain RECIPE --set ...
    torchrun --standalone --nproc_per_node 1 benchmarks/gptcli_variant.py fsdp-1 pretrain ...
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gptcli import autotune, parallel  # noqa: E402
from gptcli.cli import main as gptcli_main  # noqa: E402
from gptcli.model import GPT  # noqa: E402

choose_parallel = parallel.choose


class WholeModel(autotune.CompiledRegions):
    """One compiled region: the model's whole forward, switched on and off as the regions are."""

    def __init__(self, model: GPT) -> None:
        self.regions = [(model, "forward")]
        self.compiled = [torch.compile(model.forward)]
        self.on = False


def choose_fsdp_alone(setting: str, n_params: int, optimizer: str, dist, device) -> str:
    """fsdp even in one process (the mesh then has one rank); anything else as the trainer."""
    if setting == "fsdp":
        return "fsdp"
    return choose_parallel(setting, n_params, optimizer, dist, device)


VARIANTS = {
    "whole-compile": lambda: setattr(autotune, "CompiledRegions", WholeModel),
    "fsdp-1": lambda: setattr(parallel, "choose", choose_fsdp_alone),
}


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in VARIANTS:
        sys.exit(f"usage: gptcli_variant.py {{{','.join(VARIANTS)}}} GPTCLI-ARGS...")
    VARIANTS[sys.argv.pop(1)]()
    gptcli_main()
