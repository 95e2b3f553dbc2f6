"""What importing torch._dynamo costs an eager `pretrain`, and which calls import it.

torch's optimizers wrap their methods in `torch._disable_dynamo`, which imports torch._dynamo
on a wrapper's first call (not at import time): Optimizer.__init__ (add_param_group), step
(`_use_grad_for_differentiable` imports it on every call; the functional adam/muon it calls are
wrapped too), zero_grad, state_dict, load_state_dict. This script runs a tiny eager pretrain in
this process, prints the stack of each first import of torch._dynamo (with --bypass, after
pointing those wrappers at their undecorated functions: an experiment that mutates torch, never
something gptcli does), and with --bypass the CPU seconds that importing torch._dynamo then
costs: what an eager run would save if torch's optimizers did not import it.

    python benchmarks/startup_dynamo.py             # who imports torch._dynamo
    python benchmarks/startup_dynamo.py --bypass    # anything else? and the seconds it costs
"""

from __future__ import annotations

import argparse
import functools
import importlib.abc
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.optim._muon as muon_module  # noqa: E402
import torch.optim.adam as adam_module  # noqa: E402
from torch.optim.optimizer import Optimizer  # noqa: E402

from gptcli.cli import main as gptcli_main  # noqa: E402

RECIPE = """name: tiny
data: {source: "builtin:stories", builtin_mb: 0.3}
tokenizer: {vocab_size: 400}
model: {n_layer: 2, n_head: 2, n_embd: 32, block_size: 32}
train: {batch_size: 4, max_steps: 12, warmup_steps: 2, eval_every: 6, eval_batches: 2,
        save_every: 6, log_every: 3, compile: "off", device: cpu, dtype: fp32}
sample: {max_new_tokens: 20}
"""


class FirstImport(importlib.abc.MetaPathFinder):
    """Prints the stack that first imports a watched module."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(self, name, path, target=None):
        if name == self.name and name not in sys.modules:
            frames = [
                f
                for f in traceback.extract_stack()
                if "importlib" not in f.filename and "<frozen" not in f.filename
            ]
            print(f"first import of {name}:", file=sys.stderr)
            for f in frames[-9:-1]:
                print(f"  {f.filename}:{f.lineno} {f.name}: {f.line}", file=sys.stderr)
        return None


def bypass_optimizer_wrappers() -> None:
    """The experiment: resolve each `_disable_dynamo` wrapper to its undecorated function
    (the cache torch fills on a first call) and step without `_use_grad_for_differentiable`."""
    for wrapped in (
        Optimizer.add_param_group,
        Optimizer.zero_grad,
        Optimizer.state_dict,
        Optimizer.load_state_dict,
        adam_module.adam,
        muon_module.muon,
    ):
        raw = wrapped.__wrapped__
        setattr(raw, "__dynamo_disable", raw)
    for cls in (adam_module.Adam, muon_module.Muon):
        raw_step = cls.step.__wrapped__
        cls.step = functools.wraps(raw_step)(torch.no_grad()(raw_step))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bypass", action="store_true", help="bypass the optimizer wrappers")
    args = parser.parse_args()
    if args.bypass:
        bypass_optimizer_wrappers()
    finder = FirstImport("torch._dynamo")
    sys.meta_path.insert(0, finder)
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)  # the run folder, and torch._dynamo's config reads the working directory
        Path("tiny.yaml").write_text(RECIPE)
        start = time.process_time()
        sys.argv = ["gptcli", "pretrain", "tiny.yaml", "--quiet"]
        try:
            gptcli_main()
        except SystemExit as e:
            if e.code:
                raise
        print(f"tiny eager pretrain: {time.process_time() - start:.2f} s CPU", file=sys.stderr)
        sys.meta_path.remove(finder)
        loaded = "torch._dynamo" in sys.modules
        print(f"torch._dynamo imported by the pretrain: {loaded}", file=sys.stderr)
        if not loaded:
            start = time.process_time()
            import torch._dynamo  # noqa: F401

            print(
                f"import torch._dynamo after it: {time.process_time() - start:.2f} s CPU "
                f"(load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs)",
                file=sys.stderr,
            )


if __name__ == "__main__":
    main()
