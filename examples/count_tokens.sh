#!/usr/bin/env bash
# Count tokens in text on stdin with a run's tokenizer: ids per line from `gptcli tokenize`,
# summed by awk. Usage: some_command | count_tokens.sh [RUN]
set -euo pipefail
run="${1:-runs/smoke}"
gptcli tokenize --tokenizer "$run" | awk '{ n += NF } END { print n + 0 }'
