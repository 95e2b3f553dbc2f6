#!/usr/bin/env bash
# A CI smoke job: train the smoke recipe (whole path, < 30 s on a CPU), sample from it, and
# check what `inspect --json` says with a JSON tool. Exits non-zero if anything is off.
set -euo pipefail

gptcli pretrain smoke --quiet --json > smoke-summary.json   # the bundled recipes/smoke.yaml
text="$(gptcli sample --checkpoint runs/smoke --prompt "Once upon a time" --seed 1 --quiet)"
[ -n "$text" ] || { echo "sample printed nothing" >&2; exit 1; }

gptcli inspect runs/smoke --json | python3 -c '
import json, sys
info = json.load(sys.stdin)
step = info["newest_checkpoint"]["step"]
assert step == info["recipe"]["train"]["max_steps"], step
assert info["last_metrics"]["val_loss"] > 0
# the final checkpoint carries the final evaluation: every reader reports the same figure
summary = json.load(open("smoke-summary.json"))
final = info["newest_checkpoint"]["metrics"]["val_loss"]
assert final == info["last_metrics"]["val_loss"] == summary["val_loss"], final
print("smoke ok: step %d, val loss %.3f" % (step, info["last_metrics"]["val_loss"]))
'
