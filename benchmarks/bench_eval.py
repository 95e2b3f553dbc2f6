"""Wall time of `gptcli eval` against lm-evaluation-harness's own hf backend, same tasks.

One checkpoint the shape of recipes/tiny.yaml (llama preset, 4 layers, 192 wide, 256-token
context, a 2048-token BPE trained on the SST-2 sentences; random weights: speed does not depend
on what they say), exported with `gptcli export --format hf` for the hf backend. Both engines
answer the same lm-eval requests in one process through `lm_eval.simple_evaluate` (task data is
loaded once beforehand), inside the same harness settings `gptcli eval` uses (eval.quiet_harness:
templates compiled once, no environment report), same dtype and batch size, in interleaved rounds
so a busy machine slows them alike; medians are shown. "model part" is the time inside the LM's
request methods (tokenising and the forward passes: where the two engines differ), the rest is
the harness's own work, the same for both. Tasks: gptcli_sst2 (two-choice loglikelihood) and
gptcli_shakespeare (rolling-window perplexity).

Run from the repository root (needs the `bench` extra: pip install -e '.[bench]'):
    python benchmarks/bench_eval.py            # the full table (a few minutes on 2 cores)
    python benchmarks/bench_eval.py --quick    # a smoke run of the same code
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from gptcli import checkpoint_tensors, hf_format, load, tokenizer  # noqa: E402
from gptcli import eval as ev  # noqa: E402
from gptcli.model import GPT  # noqa: E402
from gptcli.recipe import EOT, PRESETS, ModelConfig  # noqa: E402

SST2 = Path("../shared/data/classify/sst2_train.jsonl")


def build(root: Path) -> tuple[Path, Path]:
    """A gptcli checkpoint of the tiny recipe's shape and its HF export."""
    texts = [json.loads(line)["text"] for line in SST2.read_text().splitlines()]
    tok = tokenizer.train(texts, 2048, [EOT])
    tok_path = root / "tokenizer.json"
    tokenizer.save(tok, tok_path)
    torch.manual_seed(0)
    llama = {k: v for k, v in PRESETS["llama"].items() if k in ModelConfig.__dataclass_fields__}
    cfg = ModelConfig(n_layer=4, n_head=4, n_embd=192, block_size=256, vocab_size=2048, **llama)
    model = GPT(cfg)
    snapshot = checkpoint_tensors.Snapshot(1, cfg, model.state_dict(), tok_path, state={"step": 1})
    ckpt = checkpoint_tensors.save(root / "run", snapshot)
    hf = hf_format.export_hf(load.load(ckpt), root / "hf")
    return ckpt, hf


def engines(ckpt: Path, hf: Path, dtype: str, batch: int) -> dict:
    """name -> a ready lm_eval LM: gptcli's adapter and the harness's hf backend."""
    from lm_eval.models.huggingface import HFLM

    loaded = ev.load_model(str(ckpt), "cpu", dtype, chat=False)
    model, tok = loaded.model, loaded.tok
    ours = ev.GptcliLM(model, tok, batch_size=batch)
    theirs = HFLM(
        pretrained=str(hf),
        dtype={"fp32": "float32", "bf16": "bfloat16"}[dtype],
        batch_size=batch,
        device="cpu",
        add_bos_token=True,
    )
    return {"gptcli": ours, "hf": theirs}


REQUESTS = ("loglikelihood", "loglikelihood_rolling", "generate_until")


def clocked(lm) -> dict[str, float]:
    """Time spent inside lm's request methods, summed into the returned dict's "model"."""
    spent = {"model": 0.0}
    for name in REQUESTS:
        method = getattr(lm, name)

        def wrapper(*args, _method=method, **kwargs):
            started = time.perf_counter()
            try:
                return _method(*args, **kwargs)
            finally:
                spent["model"] += time.perf_counter() - started

        setattr(lm, name, wrapper)
    return spent


def timed(lm, task: str, limit: int, manager) -> float:
    import lm_eval

    started = time.perf_counter()
    with ev.quiet_harness():
        lm_eval.simple_evaluate(
            model=lm,
            tasks=[task],
            limit=limit,
            task_manager=manager,
            bootstrap_iters=ev.BOOTSTRAP_ITERS,
        )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--sst2-docs", type=int, default=400)
    parser.add_argument("--shakespeare-docs", type=int, default=60)
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    limits = {
        "gptcli_sst2": 16 if args.quick else args.sst2_docs,
        "gptcli_shakespeare": 4 if args.quick else args.shakespeare_docs,
    }
    manager = ev.task_manager(list(limits), [])
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, hf = build(Path(tmp))
        print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs")
        print(f"torch threads: {torch.get_num_threads()}, batch size {args.batch_size}")
        print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        print("| task | dtype | gptcli eval | lm-eval hf | speed-up | model part: gptcli | hf "
              "| speed-up |")  # fmt: skip
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for dtype in ("fp32", "bf16"):
            lms = engines(ckpt, hf, dtype, args.batch_size)
            spent = {name: clocked(lm) for name, lm in lms.items()}
            for task, limit in limits.items():
                for lm in lms.values():  # warm-up: data, kernels
                    timed(lm, task, min(limit, 8), manager)
                total: dict[str, list[float]] = {name: [] for name in lms}
                model: dict[str, list[float]] = {name: [] for name in lms}
                for _ in range(rounds):
                    for name, lm in lms.items():
                        spent[name]["model"] = 0.0
                        total[name].append(timed(lm, task, limit, manager))
                        model[name].append(spent[name]["model"])
                ours, theirs = (statistics.median(total[n]) for n in ("gptcli", "hf"))
                m_ours, m_theirs = (statistics.median(model[n]) for n in ("gptcli", "hf"))
                print(
                    f"| {task} ({limit} docs) | {dtype} | {ours:.2f} s | {theirs:.2f} s "
                    f"| {theirs / ours:.2f}x | {m_ours:.2f} s | {m_theirs:.2f} s "
                    f"| {m_theirs / m_ours:.2f}x |",
                    flush=True,
                )
        print(f"load average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
