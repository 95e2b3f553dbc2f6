"""The chat model on held-out prompts: does it do what it is asked?

Trains (with --train) and scores the bundled `chat-base` and `chat` recipes through the real
`gptcli`: 200 held-out prompts of builtin:story-chat (phrasings, and for half of them the
hero's name, that the SFT data never holds), half a story to write with constraints, half a
question about a story given in the prompt (a quarter of them about something the story does
not tell). The replies come from `gptcli chat -c RUN` in its scripted mode (one JSON message
list per stdin line, one reply object per line), greedy; each is checked mechanically:

- story replies: the fraction meeting each constraint asked (the hero's name; girl or boy, by
  the reply's first he or she; the pet's name and kind; the friend; the place; the lost thing with a
  word of losing or finding; the required words) and meeting every constraint asked;
- questions: the expected word in the reply (and no "the story does not say"), and for the
  questions the story cannot answer, a reply that says so;

with held-out names reported apart, for the finetuned run and, as the baseline, the pretrained
run before SFT on the same prompts. Targets: >= 95 % per constraint, >= 80 % of story replies
meeting every constraint, >= 85 % question accuracy.

    python benchmarks/quality_chat.py --train            # pretrain + finetune (timed), then score
    python benchmarks/quality_chat.py --work DIR         # score DIR/runs/chat and chat-base
    python benchmarks/quality_chat.py --work DIR --chat runs/chat-2 --n 40 --no-base
    python benchmarks/quality_chat.py --smoke            # tiny runs and 8 prompts: the plumbing
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from quality_finetune import gptcli  # noqa: E402  (the CLI through a subprocess, timed)

from gptcli import story_chat  # noqa: E402
from gptcli.story_chat import Probe, holds  # noqa: E402

CONSTRAINTS = ("name", "gender", "pet", "friend", "place", "lost", "word")
TARGETS = {"constraint": 0.95, "every": 0.80, "questions": 0.85}
# smoke sizes: a model of a few thousand parameters, a few steps, a few prompts
SMOKE_PRETRAIN = (
    "data.builtin_mb=0.05", "tokenizer.vocab_size=300", "model.n_layer=1", "model.n_embd=32",
    "model.n_head=2", "train.max_steps=3", "train.eval_every=0", "train.eval_batches=1",
    "train.batch_size=2",
)  # fmt: skip
SMOKE_FINETUNE = ("data.builtin_mb=0.05", "train.max_steps=2", "train.batch_size=4",
                  "train.eval_batches=1")  # fmt: skip


def train(work: Path, smoke: bool) -> dict:
    """`gptcli pretrain chat-base && gptcli finetune chat` from an empty runs/, timed."""
    sets = [["--set", s] for s in (SMOKE_PRETRAIN if smoke else ())]
    out, pretrain_s = gptcli("pretrain", "chat-base", "--fresh", "--json", *sum(sets, []), cwd=work)
    base = json.loads(out)
    sets = [["--set", s] for s in (SMOKE_FINETUNE if smoke else ())]
    sets += [["--set", f"init={base['run_dir']}"]]
    out, finetune_s = gptcli("finetune", "chat", "--fresh", "--json", *sum(sets, []), cwd=work)
    chat = json.loads(out)
    return {
        "base": base["run_dir"],
        "chat": chat["run_dir"],
        "pretrain_s": round(pretrain_s, 1),
        "finetune_s": round(finetune_s, 1),
        "total_min": round((pretrain_s + finetune_s) / 60, 2),
        "base_val_bpb": base.get("val_bpb"),
        "chat_val_loss": chat.get("val_loss"),
    }


def replies(run: str, probes: list[Probe], max_new: int, work: Path) -> list[str]:
    """Each probe's reply from `gptcli chat -c RUN`, greedy, in one scripted session."""
    if not probes:
        return []
    lines = "".join(json.dumps(p.messages) + "\n" for p in probes)
    args = ["chat", "-c", run, "--temperature", "0", "--max-new-tokens", str(max_new), "--quiet"]
    out, _ = gptcli(*args, cwd=work, stdin=lines)
    got = [json.loads(line)["content"] for line in out.splitlines() if line.strip()]
    if len(got) != len(probes):
        sys.exit(f"gptcli chat -c {run}: {len(got)} replies to {len(probes)} prompts")
    return got


def rate(hits: list[bool]) -> float | None:
    return round(sum(hits) / len(hits), 4) if hits else None


def score(probes: list[Probe], answers: list[str]) -> dict:
    """The fractions the issue asks for, over these probes."""
    per: dict[str, list[bool]] = {c: [] for c in CONSTRAINTS}
    every, known, unknown, false_unknown = [], [], [], []
    for probe, reply in zip(probes, answers, strict=True):
        if probe.kind == "write":
            met = [holds(c, reply) for c in probe.checks]
            for check, ok in zip(probe.checks, met, strict=True):
                per[check.what].append(ok)
            every.append(all(met))
            continue
        (check,) = probe.checks
        if check.what == "unknown":
            unknown.append(holds(check, reply))
        else:
            known.append(holds(check, reply))
            false_unknown.append(story_chat.says_unknown(reply))
    return {
        "constraints": {c: rate(hits) for c, hits in per.items()},
        "asked": {c: len(hits) for c, hits in per.items()},
        "every_constraint": rate(every),
        "questions": rate(known),
        "not_in_story": rate(unknown),
        "questions_and_not_in_story": rate(known + unknown),
        "said_unknown_when_told": rate(false_unknown),
        "stories": len(every),
        "question_count": len(known) + len(unknown),
    }


def evaluate(run: str, probes: list[Probe], work: Path, smoke: bool) -> dict:
    writes = [p for p in probes if p.kind == "write"]
    asks = [p for p in probes if p.kind != "write"]
    started = time.perf_counter()
    story_replies = replies(run, writes, 16 if smoke else 400, work)
    answer_replies = replies(run, asks, 8 if smoke else 48, work)
    by_probe = dict(zip(map(id, writes + asks), story_replies + answer_replies, strict=True))
    answers = [by_probe[id(p)] for p in probes]
    out = {"run": run, "reply_s": round(time.perf_counter() - started, 1)}
    out["all"] = score(probes, answers)
    for held in (False, True):
        these = [i for i, p in enumerate(probes) if p.held_out_name == held]
        part = score([probes[i] for i in these], [answers[i] for i in these]) if these else {}
        out["held_out_names" if held else "seen_names"] = part
    out["replies"] = [
        {
            "kind": p.kind,
            "held_out_name": p.held_out_name,
            "prompt": p.messages[-1]["content"],
            "reply": a,
            "reference": p.reference,
            "met": {c.what: holds(c, a) for c in p.checks},
        }
        for p, a in zip(probes, answers, strict=True)
    ]
    return out


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def table(results: dict) -> str:
    """A markdown table: each measure for the chat run and the base run, by names."""
    rows = [
        ("story replies meeting: " + c, lambda s, c=c: s["constraints"][c]) for c in CONSTRAINTS
    ]
    rows += [
        ("story replies meeting every constraint", lambda s: s["every_constraint"]),
        ("question accuracy (told in the story)", lambda s: s["questions"]),
        ('"not in the story" answered as such', lambda s: s["not_in_story"]),
        ("all questions", lambda s: s["questions_and_not_in_story"]),
    ]
    head = "| measure | chat (seen names) | chat (held-out names) | chat (all) | base (all) |"
    lines = [head, "| --- | ---: | ---: | ---: | ---: |"]
    chat, base = results["chat"], results.get("base", {})
    for label, get in rows:
        cells = [chat.get("seen_names"), chat.get("held_out_names"), chat["all"], base.get("all")]
        lines.append(f"| {label} | " + " | ".join(pct(get(s)) if s else "-" for s in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", help="folder holding runs/ (default: a new temporary folder)")
    parser.add_argument("--train", action="store_true", help="train both recipes first, timed")
    parser.add_argument("--chat", default="runs/chat", help="the finetuned run (under --work)")
    parser.add_argument("--base", default="runs/chat-base", help="the baseline run")
    parser.add_argument("--n", type=int, default=200, help="held-out prompts (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="which held-out prompts")
    parser.add_argument("--no-base", action="store_true", help="skip the pretrained baseline")
    parser.add_argument("--smoke", action="store_true", help="tiny runs and 8 prompts")
    parser.add_argument("--out", help="also write the results here as JSON")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="gptcli-chat-"))
    work.mkdir(parents=True, exist_ok=True)
    n = 8 if args.smoke else args.n
    results: dict = {"prompts": n, "work": str(work)}
    runs = {"base": args.base, "chat": args.chat}
    if args.train or args.smoke:
        results["training"] = trained = train(work, args.smoke)
        runs = {"base": trained["base"], "chat": trained["chat"]}
    probes = story_chat.held_out(n, args.seed)
    results["chat"] = evaluate(runs["chat"], probes, work, args.smoke)
    if not args.no_base:
        results["base"] = evaluate(runs["base"], probes, work, args.smoke)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k not in ("chat", "base")}, indent=1))
    print(table(results))
    print(
        f"targets: >= {pct(TARGETS['constraint'])} per constraint, >= {pct(TARGETS['every'])} "
        f"meeting every constraint, >= {pct(TARGETS['questions'])} question accuracy"
    )


if __name__ == "__main__":
    main()
