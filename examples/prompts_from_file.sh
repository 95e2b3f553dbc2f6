#!/usr/bin/env bash
# Prompts from a file, one per line, through `gptcli sample` into other commands: each story's
# first sentence, and how many words each story has. Usage: prompts_from_file.sh [RUN] [FILE]
set -euo pipefail
run="${1:-runs/smoke}"
prompts="${2:-/dev/stdin}"

while IFS= read -r prompt; do
  [ -n "$prompt" ] || continue
  story="$(gptcli sample --checkpoint "$run" --prompt "$prompt" --max-new-tokens 60 --seed 1 --quiet)"
  words="$(printf '%s\n' "$story" | wc -w)"
  first="$(printf '%s\n' "$story" | head -n 1 | cut -c1-60)"
  printf '%s\t%s\t%s\n' "$prompt" "$words" "$first"
done < "$prompts"
