"""Export to HF at the tiny recipe's size: time, logits parity, and forward speed against HF.

For each family (GPT-2 and Llama switches), a model shaped like recipes/tiny.yaml is saved as a
gptcli checkpoint, exported with `gptcli.export`, loaded by transformers, and both models run
the same batch in interleaved windows, so the speed ratio holds up on a shared machine.

Run from the repository root: ``python benchmarks/export_parity.py [--windows 6]``
(needs the dev extra for transformers).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from gptcli import checkpoint_tensors, export, stories, tokenizer  # noqa: E402
from gptcli.model import GPT  # noqa: E402
from gptcli.recipe import ModelConfig  # noqa: E402

FAMILIES = {
    "gpt2": {},
    "llama": {"positions": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False},
}


def forward_rate(model, x: torch.Tensor, hf: bool) -> float:
    """Tokens per second for one forward pass over x (inference mode)."""
    start = time.perf_counter()
    with torch.inference_mode():
        model(x).logits if hf else model(x)
    return x.numel() / (time.perf_counter() - start)


def run(family: str, root: Path, tok_path: Path, windows: int) -> dict:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    vocab = tokenizer.load(tok_path).get_vocab_size()
    cfg = ModelConfig(n_layer=4, n_head=4, n_embd=192, block_size=256, vocab_size=vocab)
    for key, value in FAMILIES[family].items():
        setattr(cfg, key, value)
    model = GPT(cfg).eval()
    state = {"step": 1}
    snapshot = checkpoint_tensors.Snapshot(1, model.cfg, model.state_dict(), tok_path, state=state)
    ckpt = checkpoint_tensors.save(root / family, snapshot)
    start = time.perf_counter()
    out = export.export(str(ckpt), "hf", str(root / f"{family}-hf"))
    export_s = time.perf_counter() - start
    hf = AutoModelForCausalLM.from_pretrained(out["out"]).eval()
    x = torch.randint(0, vocab, (8, cfg.block_size), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        diff = (model(x)[0] - hf(x).logits).abs().max().item()
    ours, theirs = [], []
    forward_rate(model, x, False), forward_rate(hf, x, True)  # warm-up
    for _ in range(windows):  # interleaved: both see the same load
        ours.append(forward_rate(model, x, False))
        theirs.append(forward_rate(hf, x, True))
    ours.sort(), theirs.sort()
    return {
        "family": family,
        "class": type(hf).__name__,
        "params": model.num_params(),
        "export_s": export_s,
        "max_abs_diff": diff,
        "ours": ours[len(ours) // 2],
        "hf": theirs[len(theirs) // 2],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=6, help="timed windows per model")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tok = tokenizer.train([stories.generate(300_000, 1337)], 2048, [tokenizer.EOT])
        tokenizer.save(tok, root / "tokenizer.json")
        rows = [run(f, root, root / "tokenizer.json", args.windows) for f in FAMILIES]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 8 x 256 tokens")
    print(
        f"{'family':<7} {'HF class':<17} {'params':>10} {'export s':>9} {'max |dlogit|':>13} "
        f"{'gptcli tok/s':>13} {'HF tok/s':>10} {'ratio':>6}"
    )
    for r in rows:
        print(
            f"{r['family']:<7} {r['class']:<17} {r['params']:>10,} {r['export_s']:>9.3f} "
            f"{r['max_abs_diff']:>13.2e} {r['ours']:>13,.0f} {r['hf']:>10,.0f} "
            f"{r['ours'] / r['hf']:>6.2f}"
        )


if __name__ == "__main__":
    main()
