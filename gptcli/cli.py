"""The Typer layer: flags -> calls on the core, errors -> exit codes. Nothing else lives here.

Core modules are imported inside each command (the only function-level imports the package
keeps on purpose) so that `gptcli --help` and `gptcli tokenize` start without loading torch.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer
import typer.main

from gptcli import __version__, console
from gptcli.console import Failure, Interrupted, Terminated, UserError

app = typer.Typer(
    name="gptcli",
    help="From raw text to a trained GPT-style model and back to text.\n\n"
    "Typical use: [bold]gptcli pretrain tiny[/bold] (a bundled recipe), then "
    '[bold]gptcli sample --prompt "Once upon a time"[/bold].',
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

RECIPE_HELP = (
    "A YAML recipe file, or a bundled recipe's name (tiny, finetune/sst2: gptcli inspect "
    "--recipes lists them) when no file of that name is here."
)
# run_dir is a path on purpose (name is a plain name): stated where users set either.
RUN_FOLDER_NOTE = (
    "The run folder is runs/NAME, or the recipe's run_dir: a path, used as given (relative to "
    "the working directory), unlike name."
)

# Flags and arguments several commands take: defined once, so their help reads the same in each.
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override a recipe key by dotted path, e.g. --set train.lr=3e-4."),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or status on stderr.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
FreshOpt = Annotated[
    bool, typer.Option("--fresh", help="Start over in a new run folder (runs/NAME-2, ...).")
]
RecipeArg = Annotated[str, typer.Argument(metavar="RECIPE", help=RECIPE_HELP)]
DryRunOpt = Annotated[
    bool,
    typer.Option(
        "--dry-run",
        help="Print the plan (parameters, tokens, FLOPs, memory, auto's decisions, estimated "
        "time from a few timed steps) and train nothing.",
    ),
]
OnOpt = Annotated[
    Optional[str],
    typer.Option(
        "--on",
        metavar="GPU",
        help="Also estimate the run on this GPU: h100 or h200 (implies --dry-run).",
    ),
]
CheckpointOpt = Annotated[
    Optional[str],
    typer.Option(
        "--checkpoint", "-c", help="Checkpoint or run folder (default: newest in ./runs)."
    ),
]
DtypeOpt = Annotated[
    str, typer.Option(help="Weights: auto (bf16 where the hardware has it), fp32 or bf16.")
]
MemoryCheckOpt = Annotated[
    bool,
    typer.Option(
        "--memory-check/--no-memory-check",
        help="Refuse a model whose estimate (weights and KV cache) exceeds the memory this "
        "process may use; --no-memory-check loads it anyway.",
    ),
]
# the sampling flags of sample and chat (overrides of the run's `sample:` section)
MaxNewTokensOpt = Annotated[
    Optional[int], typer.Option(help="Tokens to generate at most, per sample or reply.")
]
ParallelOpt = Annotated[
    Optional[int],
    typer.Option(
        help="Rows decoded together (requests and samples share them; default: 8 on a CPU, "
        "32 on a GPU). More rows: more throughput, slower rows."
    ),
]
TemperatureOpt = Annotated[Optional[float], typer.Option(help="0 = greedy.")]
TopKOpt = Annotated[Optional[int], typer.Option(help="Keep the k likeliest tokens (0 = off).")]
TopPOpt = Annotated[Optional[float], typer.Option(help="Nucleus mass in (0, 1] (1 = off).")]
MinPOpt = Annotated[
    Optional[float],
    typer.Option(help="Drop tokens below min-p x the top token's probability (0 = off)."),
]
RepetitionOpt = Annotated[
    Optional[float],
    typer.Option(help="> 1 discourages tokens of the prompt and the text so far (1 = off)."),
]
StopOpt = Annotated[
    Optional[list[str]],
    typer.Option("--stop", help="Stop before this text (repeatable); it is not shown."),
]
# structured output (the `structured` extra): every sample or reply is output these allow
JsonSchemaOpt = Annotated[
    Optional[str],
    typer.Option(
        "--json-schema",
        metavar="FILE",
        help="Output is JSON valid against this JSON Schema file (the structured extra).",
    ),
]


def _version(value: bool) -> None:
    if value:
        console.out(f"gptcli {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    pass


def _set_memory_check(on: bool) -> None:
    """--memory-check/--no-memory-check of the commands that load a model to run it."""
    from gptcli import memory

    memory.set_inference_check(on)


def _print_json(obj: object) -> None:
    console.out(json.dumps(obj, ensure_ascii=False))


# --------------------------------------------------------------------------- tokenize


@app.command(
    epilog="Examples:\n\n"
    "  gptcli tokenize recipes/tiny.yaml\n\n"
    '  gptcli tokenize --tokenizer runs/tiny "Once upon a time"\n\n'
    "  cat notes.txt | gptcli tokenize --tokenizer runs/tiny --count\n\n"
    "  echo '[7, 42, 99]' | gptcli tokenize --tokenizer runs/tiny --decode\n\n"
    "  cat corpus.txt | gptcli tokenize recipes/tiny.yaml --set data.source=-",
)
def tokenize(
    args: Annotated[
        Optional[list[str]],
        typer.Argument(
            help="RECIPE, or with --tokenizer the TEXT to encode (stdin lines if none)."
        ),
    ] = None,
    tokenizer_path: Annotated[
        Optional[str],
        typer.Option(
            "--tokenizer", help="tokenizer.json, checkpoint or run folder to encode with."
        ),
    ] = None,
    decode: Annotated[
        bool, typer.Option("--decode", help="Turn ids (spaces or a JSON array) into text.")
    ] = False,
    count: Annotated[
        bool, typer.Option("--count", help="Print only the number of tokens of each line.")
    ] = False,
    sets: SetOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Train the recipe's BPE and write token shards, or encode/decode text in a pipeline."""
    console.set_quiet(quiet)
    if tokenizer_path is None:
        if decode or count:
            raise UserError("--decode and --count need --tokenizer PATH")
        if not args or len(args) != 1:
            raise UserError("tokenize takes one RECIPE (or --tokenizer PATH to encode text)")
        from gptcli import bundled

        recipe = bundled.load(args[0], sets or [])  # before torch: a bad recipe fails at once
        from gptcli import pretrain as pretrain_mod

        run_dir, manifest = pretrain_mod.tokenize(recipe)
        if as_json:
            _print_json({"run_dir": str(run_dir), **manifest})
        return
    if sets:
        raise UserError("--set applies to a recipe, not to --tokenizer mode")
    from gptcli import tokenizer

    if count and decode:
        raise UserError("--count and --decode do not go together (--count counts tokens of text)")
    tok = tokenizer.load(tokenizer_path)
    if args:
        lines = [tokenizer.check_text(a, f"TEXT argument {i}") for i, a in enumerate(args, 1)]
    elif sys.stdin is None:
        raise UserError("no TEXT given and stdin is closed (pass TEXT, or lines on stdin)")
    else:
        lines = (line.rstrip("\n") for line in tokenizer.read_lines(sys.stdin.buffer))
    for out_line in tokenizer.pipeline(tok, lines, decode, as_json, count):
        console.out(out_line)


# --------------------------------------------------------------------------- pretrain / finetune


@app.command(
    epilog="Examples:\n\n"
    "  gptcli pretrain recipes/tiny.yaml\n\n"
    "  gptcli pretrain tiny   (the bundled recipe, from any folder)\n\n"
    "  gptcli pretrain recipes/tiny.yaml --set train.max_steps=100 --set model.n_layer=2\n\n"
    "  gptcli pretrain recipes/smoke.yaml --fresh --quiet --json\n\n"
    "  gptcli pretrain gpt2-124m --dry-run --on h100   (the plan: memory, time; no training)\n\n"
    + RUN_FOLDER_NOTE,
)
def pretrain(
    recipe_path: RecipeArg,
    sets: SetOpt = None,
    fresh: FreshOpt = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
    dry_run: DryRunOpt = False,
    on: OnOpt = None,
) -> None:
    """Tokenize if needed, then train from scratch (resuming from the newest checkpoint)."""
    if dry_run or on is not None:
        _plan("pretrain", recipe_path, sets, on, quiet, as_json)
    else:
        _train("pretrain", recipe_path, sets, fresh, quiet, as_json)


@app.command(
    epilog="Examples:\n\n"
    "  gptcli finetune recipes/finetune-lm.yaml --set init=runs/tiny\n\n"
    "  gptcli finetune recipes/finetune-lm.yaml --set data.source=my_texts/\n\n"
    "  gptcli finetune finetune/sst2 --set data.source=train.jsonl --set data.dev=dev.jsonl\n\n"
    "  gptcli finetune finetune/sst2 --dry-run   (the plan of the finetune; no training)\n\n"
    + RUN_FOLDER_NOTE,
)
def finetune(
    recipe_path: RecipeArg,
    sets: SetOpt = None,
    fresh: FreshOpt = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
    dry_run: DryRunOpt = False,
    on: OnOpt = None,
) -> None:
    """Continue training the checkpoint named by the recipe's `init` on task data."""
    if dry_run or on is not None:
        _plan("finetune", recipe_path, sets, on, quiet, as_json)
    else:
        _train("finetune", recipe_path, sets, fresh, quiet, as_json)


def _train(
    command: str, recipe_path: str, sets: list[str] | None, fresh: bool, quiet: bool, as_json: bool
) -> None:
    """pretrain and finetune: the recipe is checked before torch loads : bad ones fail fast."""
    console.set_quiet(quiet)
    from gptcli import bundled

    recipe = bundled.load(recipe_path, sets or [])
    if command == "pretrain":
        from gptcli.pretrain import pretrain as train
    else:
        from gptcli.finetune import finetune as train
    summary = train(recipe, fresh=fresh)
    if as_json and summary is not None:  # under torchrun, rank 0 alone speaks for the job
        _print_json(summary)


def _plan(
    command: str,
    recipe_path: str,
    sets: list[str] | None,
    on: str | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """--dry-run: the run's plan, printed; nothing trained, nothing written in the run folder."""
    console.set_quiet(quiet)
    from gptcli import bundled
    from gptcli import plan as plan_mod

    recipe = bundled.load(recipe_path, sets or [])
    _show({"kind": "plan", "path": recipe_path, **plan_mod.plan(recipe, command, on)}, as_json)


# --------------------------------------------------------------------------- sample


@app.command(
    epilog="Examples:\n\n"
    '  gptcli sample --prompt "Once upon a time"\n\n'
    '  gptcli sample -c runs/tiny --prompt "One day" --temperature 0 --max-new-tokens 50\n\n'
    '  gptcli sample --prompt "Once" --stop "The end" --min-p 0.05 --repetition-penalty 1.2\n\n'
    "  gptcli sample --prompt-file prompt.txt --num-samples 4 --json\n\n"
    '  gptcli sample -c runs/sst2 --prompt "a gorgeous, witty film"   (a classifier)\n\n'
    "  gptcli sample -c runs/rte --json < rte_dev.jsonl | jq .correct\n\n"
    "  cat prompts.txt | gptcli sample --each-line --seed 1 --json\n\n"
    '  gptcli sample --prompt "A person:" --json-schema person.json --json\n\n'
    '  gptcli sample --prompt "The cat was" --choice " happy" --choice " sad" --num-samples 4',
)
def sample(
    checkpoint_path: CheckpointOpt = None,
    prompt: Annotated[
        Optional[str],
        typer.Option("--prompt", "-p", help="Prompt (else --prompt-file, else stdin)."),
    ] = None,
    prompt_file: Annotated[
        Optional[str],
        typer.Option(
            "--prompt-file",
            help="Read the prompt from this file (its one final newline is not part of it).",
        ),
    ] = None,
    each_line: Annotated[
        bool,
        typer.Option("--each-line", help="Every line of stdin (or --prompt-file) is a prompt."),
    ] = False,
    max_new_tokens: MaxNewTokensOpt = None,
    temperature: TemperatureOpt = None,
    top_k: TopKOpt = None,
    top_p: TopPOpt = None,
    min_p: MinPOpt = None,
    repetition_penalty: RepetitionOpt = None,
    stop: StopOpt = None,
    num_samples: Annotated[
        int, typer.Option(help="Samples per prompt, generated as one batch.")
    ] = 1,
    seed: Annotated[
        Optional[int], typer.Option(help="Same seed and flags give the same text.")
    ] = None,
    dtype: DtypeOpt = "auto",
    parallel: ParallelOpt = None,
    memory_check: MemoryCheckOpt = True,
    stream: Annotated[
        bool, typer.Option("--stream/--no-stream", help="Print tokens as they come.")
    ] = True,
    chat: Annotated[
        Optional[bool],
        typer.Option(
            "--chat/--no-chat",
            help="Wrap the prompt in the SFT chat template (default: on for SFT checkpoints).",
        ),
    ] = None,
    json_schema: JsonSchemaOpt = None,
    json_object: Annotated[
        bool, typer.Option("--json-object", help="Output is a JSON object (any keys).")
    ] = False,
    regex: Annotated[
        Optional[str],
        typer.Option(
            "--regex",
            metavar="RE",
            help="Output matches this regex as a whole (Rust regex syntax: no lookaround, no "
            "backreferences).",
        ),
    ] = None,
    choice: Annotated[
        Optional[list[str]],
        typer.Option("--choice", help="Output is exactly one of these (repeatable)."),
    ] = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Generate text from a checkpoint, streaming to stdout; --json: one object per sample.

    --json-schema, --json-object, --regex or --choice constrain every sample to output that
    parses (it ends when complete; one cut by --max-new-tokens gets a warning). A classifier
    checkpoint prints each input's label distribution (the likeliest first); pairs and
    choices come as JSON lines on stdin, one prediction per line."""
    console.set_quiet(quiet)
    _set_memory_check(memory_check)
    from gptcli import constrain, generate, tokenizer

    constraint = constrain.from_cli(json_schema, json_object, regex, choice)
    prompts = _prompts(prompt, prompt_file, each_line)
    stop = [tokenizer.check_text(s, "--stop") for s in stop or []] or None
    live = stream and not as_json and num_samples == 1
    separator = "\n" if num_samples > 1 else ""

    def show(result: dict) -> None:
        if as_json:
            _print_json(result)
        elif "probs" in result:  # a classifier's answer
            probs = result["probs"]
            pairs = probs.items() if isinstance(probs, dict) else enumerate(probs)
            ranked = sorted(pairs, key=lambda kv: -kv[1])
            console.out("  ".join(f"{label} {p:.4f}" for label, p in ranked))
        elif live:
            console.out("")
        else:
            alone = result.get("chat") or constraint is not None  # a reply; output that parses
            shown = result["text"] if alone else result["prompt"] + result["text"]
            console.out(shown + "\n" + separator, end="")

    generate.run(
        checkpoint_path,
        prompts,
        overrides=_sampling_overrides(
            max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, stop
        ),
        seed=seed,
        num_samples=num_samples,
        dtype=dtype,
        on_text=(lambda piece: console.out(piece, end="")) if live else None,
        on_result=show,
        chat=chat,
        parallel=parallel,
        constraint=constraint,
    )


def _sampling_overrides(
    max_new_tokens: int | None,
    temperature: float | None,
    top_k: int | None,
    top_p: float | None,
    min_p: float | None,
    repetition_penalty: float | None,
    stop: list[str] | None,
) -> dict:
    """The sampling flags `sample` and `chat` share, as overrides of the run's `sample:` section
    (None: the recipe's value)."""
    return {
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "min_p": min_p,
        "repetition_penalty": repetition_penalty,
        "stop": stop,
    }


def _prompts(prompt: str | None, prompt_file: str | None, each_line: bool):
    """The prompts to sample: one text, or (--each-line) every line, read lazily from stdin.

    Every prompt is checked to be UTF-8 text (exit 2 naming where a bad byte is)."""
    from gptcli import tokenizer

    if prompt is not None and (prompt_file is not None or each_line):
        raise UserError("--prompt cannot be combined with --prompt-file or --each-line")
    if prompt is not None:
        return [tokenizer.check_text(prompt, "--prompt")]
    if prompt_file is not None:
        path = Path(prompt_file)
        if not path.is_file():
            raise UserError(f"--prompt-file: {path} not found (pass a UTF-8 text file)")
        text = tokenizer.decode_text(path.read_bytes(), f"--prompt-file {path}")
        if each_line:
            return text.splitlines()
        return [text.removesuffix("\n")]  # an editor's final newline is not the prompt's
    if sys.stdin is None or sys.stdin.isatty():
        if each_line:
            raise UserError("--each-line reads prompts from stdin or --prompt-file; none given")
        return [""]
    if each_line:
        return (line.rstrip("\r\n") for line in tokenizer.read_lines(sys.stdin.buffer))
    return [tokenizer.decode_text(sys.stdin.buffer.read(), "stdin")]


# --------------------------------------------------------------------------- inspect


@app.command(
    name="inspect",
    epilog="Examples:\n\n"
    "  gptcli inspect runs/tiny\n\n"
    "  gptcli inspect runs/tiny/checkpoints/step-0000600 --json | jq .params.total\n\n"
    "  gptcli inspect recipes/tiny.yaml\n\n"
    "  gptcli inspect --recipes\n\n"
    '  gptcli inspect runs/tiny --text "Once upon a time"\n\n'
    "  gptcli inspect runs/tiny --score ../shared/data/tinystories/TinyStories-valid.head.txt\n\n"
    "  gptcli inspect runs/tiny --plot loss.png\n\n"
    "  gptcli inspect runs/fineweb-edu --removed near_duplicate",
)
def inspect_cmd(
    path: Annotated[
        Optional[str],
        typer.Argument(
            help="Run folder, checkpoint, tokenizer.json, shard folder, recipe or bundled "
            "recipe's name."
        ),
    ] = None,
    recipes: Annotated[
        bool,
        typer.Option(
            "--recipes", help="List the bundled recipes: name, what it trains, data it needs."
        ),
    ] = False,
    text: Annotated[
        Optional[str],
        typer.Option("--text", help="Show how the tokenizer of PATH splits this text."),
    ] = None,
    score_file: Annotated[
        Optional[str],
        typer.Option("--score", metavar="FILE", help="Loss, bits/byte, perplexity on FILE."),
    ] = None,
    plot: Annotated[
        Optional[str],
        typer.Option("--plot", metavar="FILE.png", help="Write the run's loss curve as a PNG."),
    ] = None,
    removed: Annotated[
        Optional[str],
        typer.Option(
            "--removed",
            metavar="REASON",
            help="Show the first documents curation removed for REASON (e.g. near_duplicate).",
        ),
    ] = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Explain what PATH is: config, parameters, training state, metrics, data."""
    console.set_quiet(quiet)
    from gptcli import inspect as inspect_mod
    from gptcli import tokenizer

    if sum(x is not None for x in (text, score_file, plot, removed)) > 1:
        raise UserError("use one of --text, --score, --plot, --removed at a time")
    if recipes:
        if any(x is not None for x in (path, text, score_file, plot, removed)):
            raise UserError("--recipes lists the bundled recipes: it takes no PATH or option")
        _show(inspect_mod.bundled_recipes(), as_json)
        return
    if path is None:
        raise UserError("inspect needs a PATH (or --recipes to list the bundled recipes)")
    path = inspect_mod.bundled_or_path(path)
    if text is not None:
        tokenizer.check_text(text, "--text")
    if score_file is not None:
        from gptcli import eval as eval_mod

        info = eval_mod.score(path, score_file)
    elif removed is not None:
        info = inspect_mod.describe_removed(path, removed)
    else:
        info = inspect_mod.describe(path, text=text)
    if plot is not None:
        if info["kind"] != "run":
            raise UserError(f"--plot draws a run's loss curve; {path} is a {info['kind']}")
        info["plot"] = inspect_mod.plot_png(info["curve"], plot, title=path)
        console.info(f"inspect: wrote {info['plot']}")
    _show(info, as_json)


def _show(info: dict, as_json: bool) -> None:
    from gptcli import inspect as inspect_mod

    if as_json:
        _print_json(info)
    else:
        inspect_mod.render(info)


# --------------------------------------------------------------------------- eval


@app.command(
    name="eval",
    epilog="Examples:\n\n"
    "  gptcli eval runs/tiny --tasks gptcli_sst2 --limit 200\n\n"
    "  gptcli eval runs/tiny --tasks hellaswag,arc_easy --num-fewshot 0 --json\n\n"
    "  gptcli eval exported/tiny-hf --tasks gptcli_shakespeare --out scores.json\n\n"
    "  gptcli eval runs/tiny --tasks my_task --include-path my_tasks/",
)
def eval_cmd(
    path: Annotated[
        Optional[str],
        typer.Argument(
            metavar="CHECKPOINT",
            help="Checkpoint, run folder (its newest) or HF folder (default: newest in ./runs).",
        ),
    ] = None,
    tasks: Annotated[
        str,
        typer.Option(
            "--tasks",
            "-t",
            help="Comma-separated lm-evaluation-harness tasks (gptcli's own: gptcli_sst2, "
            "gptcli_shakespeare, gptcli_story_cloze).",
        ),
    ] = "",
    limit: Annotated[
        Optional[float],
        typer.Option(help="Examples per task (a fraction < 1: that share); for quick checks."),
    ] = None,
    num_fewshot: Annotated[
        Optional[int], typer.Option(help="Examples in the prompt (default: the task's).")
    ] = None,
    batch_size: Annotated[
        int, typer.Option(help="Rows per forward pass (short sequences share a row).")
    ] = 16,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    dtype: DtypeOpt = "auto",
    memory_check: MemoryCheckOpt = True,
    seed: Annotated[int, typer.Option(help="Seed of few-shot choice and sampling.")] = 0,
    include_path: Annotated[
        Optional[list[str]],
        typer.Option(
            "--include-path", help="A folder of task YAML files (repeatable); local data."
        ),
    ] = None,
    log_samples: Annotated[
        bool, typer.Option("--log-samples", help="Keep every request and answer in the JSON.")
    ] = False,
    apply_chat_template: Annotated[
        bool,
        typer.Option(
            "--apply-chat-template", help="Wrap prompts in the chat template (SFT checkpoints)."
        ),
    ] = False,
    out: Annotated[
        Optional[str], typer.Option("--out", "-o", help="Also write the JSON result here.")
    ] = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Score a model on lm-evaluation-harness tasks (HellaSwag, ARC, ... or local ones): a table
    of task, metric, value and stderr; a run folder keeps each result in eval/."""
    console.set_quiet(quiet)
    _set_memory_check(memory_check)
    from gptcli import eval as eval_mod

    options = eval_mod.EvalOptions(
        tasks,
        limit=limit,
        num_fewshot=num_fewshot,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        seed=seed,
        include_path=tuple(include_path or ()),
        log_samples=log_samples,
        chat=apply_chat_template,
        out=out,
    )
    result = eval_mod.evaluate(path, options)
    if as_json:
        _print_json(result)
    else:
        eval_mod.render(result)


# --------------------------------------------------------------------------- export


@app.command(
    epilog="Examples:\n\n"
    "  gptcli export runs/tiny --format hf --out exported/tiny-hf\n\n"
    "  gptcli export runs/tiny-llama --format gguf --out exported/tiny-gguf --json",
)
def export(
    checkpoint_path: Annotated[
        str,
        typer.Argument(
            metavar="CHECKPOINT", help="Checkpoint, run folder (its newest) or HF folder."
        ),
    ],
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="hf (transformers folder), gguf (llama.cpp), or gptcli (a standalone "
            "checkpoint, LoRA adapters merged).",
        ),
    ],
    out: Annotated[
        str,
        typer.Option(
            "--out",
            "-o",
            help="Folder to write (new or empty): a path, used as given (relative to the "
            "working directory).",
        ),
    ],
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Write a checkpoint where other tools can use it: HF transformers, GGUF, or a standalone
    gptcli checkpoint (LoRA adapters merged into full weights)."""
    console.set_quiet(quiet)
    from gptcli import export as export_mod

    result = export_mod.export(checkpoint_path, fmt, out)
    if as_json:
        _print_json(result)
    else:
        console.info(f"export: {result['family']} model from {result['checkpoint']}")
        console.out(result["out"])


# --------------------------------------------------------------------------- chat / serve


@app.command(
    epilog="Examples:\n\n"
    "  gptcli chat -c runs/sft\n\n"
    "  gptcli chat -c runs/sft --temperature 0.7 --max-new-tokens 100\n\n"
    '  echo \'[{"role": "user", "content": "Hi"}]\' | gptcli chat -c runs/sft\n\n'
    "  gptcli chat -c runs/sft --json-schema answer.json   (every reply is such JSON)\n\n"
    "At the prompt: /reset clears the conversation, /system TEXT sets the system message, "
    "/exit or Ctrl-D quits; Ctrl-C cancels a reply (at an empty prompt it quits with 130).",
)
def chat(
    checkpoint_path: CheckpointOpt = None,
    max_new_tokens: MaxNewTokensOpt = None,
    temperature: TemperatureOpt = None,
    top_k: TopKOpt = None,
    top_p: TopPOpt = None,
    min_p: MinPOpt = None,
    repetition_penalty: RepetitionOpt = None,
    stop: StopOpt = None,
    seed: Annotated[Optional[int], typer.Option(help="Sample every reply with this seed.")] = None,
    dtype: DtypeOpt = "auto",
    json_schema: JsonSchemaOpt = None,
    memory_check: MemoryCheckOpt = True,
    quiet: QuietOpt = False,
) -> None:
    """Talk to a model in its chat template, replies streaming; with stdin not a terminal, each
    line is a JSON message list and each answer one JSON reply line.

    The history is kept (the oldest turns dropped when it outgrows the context). A base model
    without a chat template continues the conversation's text. --json-schema makes every reply
    JSON valid against the schema."""
    console.set_quiet(quiet)
    _set_memory_check(memory_check)
    from gptcli import chat as chat_mod
    from gptcli import constrain

    constraint = constrain.from_cli(json_schema)
    scripted = sys.stdin is not None and not sys.stdin.isatty()
    chat_mod.run(
        checkpoint_path,
        overrides=_sampling_overrides(
            max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, stop
        ),
        seed=seed,
        dtype=dtype,
        lines=sys.stdin if scripted else None,
        constraint=constraint,
    )


@app.command(
    epilog="Examples:\n\n"
    "  gptcli serve -c runs/sft\n\n"
    "  gptcli serve -c runs/tiny --port 8080 --max-queue 32 --max-tokens 256\n\n"
    "  gptcli serve -c runs/sft --host 0.0.0.0 --api-key $(openssl rand -hex 16)\n\n"
    "Then: curl http://127.0.0.1:8000/v1/models, or any OpenAI client with "
    "base_url=http://127.0.0.1:8000/v1. Sampling settings default to the run's `sample:` "
    "section; requests set max_tokens, temperature, top_p, stop, n, seed, logprobs and "
    "gptcli's top_k, min_p, repetition_penalty, ignore_eos. Also: GET /health (503 while the "
    "model loads), GET /metrics (Prometheus), POST /tokenize and /detokenize.",
)
def serve(
    checkpoint_path: CheckpointOpt = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on; other than 127.0.0.1 wants --api-key.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0 = any free port).")] = 8000,
    api_key: Annotated[
        Optional[str],
        typer.Option(
            "--api-key", envvar="GPTCLI_API_KEY", help="Require Authorization: Bearer KEY."
        ),
    ] = None,
    max_queue: Annotated[
        int, typer.Option(help="Requests that may wait for the model; more get 429.")
    ] = 16,
    max_tokens: Annotated[
        Optional[int],
        typer.Option(
            help="The most tokens a request may ask for (max_tokens); more get 400. "
            "Default: the model's context size."
        ),
    ] = None,
    request_timeout: Annotated[
        Optional[float],
        typer.Option(
            metavar="SECONDS",
            help="End each request's generation after this long, with what it has "
            "(finish_reason length). Default: no limit.",
        ),
    ] = None,
    drain_timeout: Annotated[
        float,
        typer.Option(
            metavar="SECONDS",
            help="At SIGTERM or Ctrl-C, requests in flight get this long; then each still "
            "running is answered with an error.",
        ),
    ] = 30.0,
    dtype: DtypeOpt = "auto",
    parallel: ParallelOpt = None,
    memory_check: MemoryCheckOpt = True,
    quiet: QuietOpt = False,
) -> None:
    """Serve the model over OpenAI's HTTP API: /v1/models, /v1/completions and
    /v1/chat/completions, streaming or not. The port is bound before the weights load
    (GET /health: 503 until they have). SIGTERM or Ctrl-C finishes the requests in flight
    (--drain-timeout) and exits 0."""
    console.set_quiet(quiet)
    _set_memory_check(memory_check)
    from gptcli import engine
    from gptcli import serve as serve_mod
    from gptcli.device import pick_device

    rows = parallel or engine.default_slots(pick_device("auto"))
    checked = engine.check_model(
        checkpoint_path, "serve", dtype=dtype, rows=rows, rows_flag="--parallel"
    )
    options = serve_mod.Options(
        host, port, api_key, max_queue, max_tokens, request_timeout, drain_timeout, rows
    )
    serve_mod.serve(checked, options)


# --------------------------------------------------------------------------- entry point


def _click_error(e: BaseException) -> tuple[int, str | None] | None:
    """Exit code and line for Click's own exceptions (usage errors, --help exits), None for
    others. Matched by class name because newer Typer vendors Click under a private module.
    """
    kinds = {cls.__name__ for cls in type(e).__mro__}
    if "Exit" in kinds:
        return e.exit_code, None
    if "Abort" in kinds:
        return 130, "interrupted"
    if "NoArgsIsHelpError" in kinds:  # `gptcli` alone: the help is the answer, on stdout
        return 2, None
    if "UsageError" in kinds:
        ctx = getattr(e, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx else ""
        return 2, f"error: {e.format_message()}{hint}"
    if "ClickException" in kinds:
        return e.exit_code, f"error: {e.format_message()}"
    return None


def _outcome(e: BaseException) -> tuple[int, str | None]:
    """The exit code for what stopped the command, and the one line that says so."""
    if isinstance(e, UserError):
        return 2, f"error: {e}"
    if isinstance(e, Failure):
        return 1, f"error: {e}"
    if isinstance(e, Interrupted):
        return e.code, str(e)
    if isinstance(e, KeyboardInterrupt):  # Ctrl-C, or SIGTERM as Terminated
        return (e.code if isinstance(e, Terminated) else 130), "interrupted"
    if isinstance(e, BrokenPipeError):
        # the reader of our stdout went away (e.g. `| head`): not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0, None
    failure = console.io_failure(e) or console.memory_failure(e)
    if failure is not None:
        return _outcome(failure)
    click = _click_error(e)
    if click is not None:
        return click
    if os.environ.get("GPTCLI_DEBUG"):
        raise e
    return 1, (
        f"error: unexpected failure: {type(e).__name__}: {e} (GPTCLI_DEBUG=1 shows a traceback)"
    )


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def _invoke(args: list[str]) -> None:
    """Parse and run one command. Typer's own top level is bypassed: it turns Ctrl-C into a
    returned 130 (which hid it) and a closed stdout into exit 1; main maps both itself."""
    if "_GPTCLI_COMPLETE" in os.environ:  # shell completion: Typer answers and exits
        app()
    command = typer.main.get_command(app)
    with command.make_context("gptcli", args) as ctx:
        command.invoke(ctx)


def _ignore_signals() -> None:
    """Registered first, so it runs after every other exit handler: Python's shutdown then puts
    back the default handlers, with which a late Ctrl-C would kill the process (exit -2); an
    ignored signal stays ignored."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def _exit(code: int, line: str | None) -> NoReturn:
    """Print the one line and leave with code. A further Ctrl-C or SIGTERM while Python shuts
    down (its exit handlers join threads and unload torch's libraries) ends the process at once
    with the same code, instead of printing an ignored-exception traceback."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, lambda signum, frame: os._exit(code))
    if line is not None:
        console.stderr.print(line, style="red" if code in (1, 2) else None, markup=False)
    sys.exit(code)


def main() -> None:
    """Run the app; map every failure to one line on stderr and its exit code: 2 for bad
    input, 1 for a failure the user cannot fix by changing input, 130/143 for SIGINT/SIGTERM
    at any point (SIGTERM raises Terminated, as Ctrl-C raises KeyboardInterrupt; the trainer
    puts its own save-then-exit handler in place while it trains)."""
    atexit.register(_ignore_signals)
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN:
        signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        _invoke(sys.argv[1:])
        code, line = 0, None
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - the last line of defence: one line, an exit code
        code, line = _outcome(e)
    _exit(code, line)


if __name__ == "__main__":
    main()
