# Two entry points: `make demo` (train the tiny model and sample a story) and `make test`;
# `make chat` trains the chat model (about ten minutes on a 2-core CPU) and opens a chat with it.
# All create .venv when it is missing; torch is installed first as the pinned CPU build.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo chat test lint venv bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e .
	touch $(STAMP)

# the test extras: pytest, ruff, hypothesis, transformers and lm-eval[hf] (parity tests), openai
# and pexpect (serve and chat tests), gguf, matplotlib, fastapi, uvicorn and prometheus-client (serve), the trackers
# (tensorboard, wandb, mlflow-skinny with its sqlite store), lm-eval (gptcli eval), pyarrow
# (Parquet and Arrow sources), datasets (hf: sources), llguidance (structured output; jsonschema
# in dev checks its samples), rensa (data.dedup: near)
$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[dev,export,parquet,plot,serve,tensorboard,wandb,mlflow,eval,hf,structured,curate]'
	touch $(TEST_STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/gptcli pretrain recipes/tiny.yaml
	$(BIN)/gptcli sample --prompt "Once upon a time" --seed 1

# pretrain recipes/chat-base.yaml, finetune recipes/chat.yaml on it, then talk to the result
chat: $(STAMP)
	$(BIN)/gptcli pretrain chat-base
	$(BIN)/gptcli finetune chat
	$(BIN)/gptcli chat -c runs/chat

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# two workers, a test file each at a time (tests/conftest.py starts the slowest files first),
# one torch thread each: most of the suite's time is single-threaded start-up of subprocesses
test: lint
	OMP_NUM_THREADS=1 $(BIN)/pytest -n 2 --dist loadfile --no-loadscope-reorder

# the speed benchmarks (each prints ratios against a peer measured in the same run); the
# quality ones (quality_shakespeare.py, sweep_arch.py) take minutes and run separately
bench: $(STAMP)
	$(BIN)/pip install -q -e '.[bench,export,curate]'
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_sample.py
	$(BIN)/python benchmarks/bench_tokenize.py
	$(BIN)/python benchmarks/export_parity.py
	$(BIN)/python benchmarks/bench_eval.py
	$(BIN)/python benchmarks/bench_curate.py

clean:
	rm -rf runs .pytest_cache .ruff_cache
