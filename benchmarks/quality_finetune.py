"""The GPT-1 recipe on this machine: pretrain on unlabelled text, finetune classifiers, and SFT.

Runs the shipped recipes through the real `gptcli` and prints what issue #7 asks to record:
1. `recipes/sst2-pretrain.yaml` (SST-2 training sentences without labels), then
   `recipes/finetune/sst2.yaml` (task: classify, lm_weight 0.5): SST-2 dev accuracy and the
   wall time of pretraining plus finetuning together (target: >= 80 % within 30 minutes);
2. the same finetune with lm_weight 0 beside it (does the auxiliary LM loss help?);
3. `recipes/finetune/rte.yaml`: RTE dev accuracy against its majority class (52.7 %);
4. with --sft: `recipes/tiny.yaml` then `recipes/finetune/sft.yaml`, and how many sampled
   replies to held-out GSM8K prompts end at the template's <|end|> token.

    python benchmarks/quality_finetune.py [--work /tmp/gptcli-quality] [--sft] [--skip-pretrain]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def gptcli(*args: str, cwd: Path, stdin: str | None = None) -> tuple[str, float]:
    """Run the CLI; stdout and wall seconds. stderr passes through (progress lines)."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "gptcli", *args],
        cwd=cwd,
        input=stdin,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    if proc.returncode != 0:
        sys.exit(f"gptcli {' '.join(args)} failed with exit code {proc.returncode}")
    return proc.stdout, time.perf_counter() - started


def recipe(name: str) -> str:
    return str(REPO / "recipes" / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/gptcli-quality", help="folder for the runs")
    parser.add_argument("--sft", action="store_true", help="also pretrain tiny and run SFT")
    parser.add_argument("--skip-pretrain", action="store_true", help="reuse runs/sst2-lm")
    parser.add_argument("--set", action="append", default=[], help="overrides for sst2.yaml")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sst2 = DATA / "classify"
    paths = [
        f"data.source={sst2 / 'sst2_train.jsonl'}",
        f"data.dev={sst2 / 'sst2_dev.jsonl'}",
    ]
    results: dict[str, object] = {}

    pretrain_s = 0.0
    if not args.skip_pretrain:
        out, pretrain_s = gptcli(
            "pretrain",
            recipe("sst2-pretrain.yaml"),
            "--set",
            f"data.source={sst2 / 'sst2_train.jsonl'}",
            "--fresh",
            "--json",
            cwd=work,
        )
        summary = json.loads(out)
        results["pretrain"] = {k: summary[k] for k in ("run_dir", "step", "val_bpb", "elapsed_s")}
        init = summary["run_dir"]
    else:
        init = "runs/sst2-lm"

    runs = {"sst2": [], "sst2-lm0": ["task.lm_weight=0"]}
    for name, extra in runs.items():
        sets = [f"init={init}", f"name={name}", *paths, *extra, *args.set]
        flags = [x for s in sets for x in ("--set", s)]
        out, seconds = gptcli(
            "finetune", recipe("finetune/sst2.yaml"), *flags, "--fresh", "--json", cwd=work
        )
        summary = json.loads(out)
        results[name] = {
            "dev_accuracy": summary["val_accuracy"],
            "macro_f1": summary["val_macro_f1"],
            "majority": summary["majority_accuracy"],
            "finetune_s": round(seconds, 1),
        }
    results["sst2"]["pretrain_plus_finetune_min"] = round(
        (pretrain_s + results["sst2"]["finetune_s"]) / 60, 2
    )

    rte = DATA / "classify"
    sets = [
        f"init={init}",
        f"data.source={rte / 'rte_train.jsonl'}",
        f"data.dev={rte / 'rte_dev.jsonl'}",
    ]
    out, seconds = gptcli(
        "finetune",
        recipe("finetune/rte.yaml"),
        *[x for s in sets for x in ("--set", s)],
        "--fresh",
        "--json",
        cwd=work,
    )
    summary = json.loads(out)
    results["rte"] = {
        "dev_accuracy": summary["val_accuracy"],
        "majority": summary["majority_accuracy"],
        "finetune_s": round(seconds, 1),
    }

    if args.sft:
        gptcli("pretrain", recipe("tiny.yaml"), "--json", cwd=work)
        instruct = DATA / "instruct"
        sets = [
            f"data.source={instruct / 'gsm8k_train.jsonl'}",
            f"data.dev={instruct / 'gsm8k_test.jsonl'}",
        ]
        out, seconds = gptcli(
            "finetune",
            recipe("finetune/sft.yaml"),
            *[x for s in sets for x in ("--set", s)],
            "--fresh",
            "--json",
            cwd=work,
        )
        summary = json.loads(out)
        prompts = [
            json.loads(line)["prompt"].replace("\n", " ")
            for line in (instruct / "gsm8k_test.jsonl").read_text().splitlines()[:20]
        ]
        out, _ = gptcli(
            "sample",
            "-c",
            summary["run_dir"],
            "--each-line",
            "--json",
            "--seed",
            "1",
            "--max-new-tokens",
            "256",
            cwd=work,
            stdin="\n".join(prompts) + "\n",
        )
        replies = [json.loads(line) for line in out.splitlines()]
        results["sft"] = {
            "dev_loss": summary["val_loss"],
            "finetune_s": round(seconds, 1),
            "replies": len(replies),
            "ended_at_end_token": sum(r["finish_reason"] == "eos" for r in replies),
            "with_final_answer_line": sum("####" in r["text"] for r in replies),
            "example": replies[0]["text"][:300],
        }

    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
