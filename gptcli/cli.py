"""The Typer layer: flags -> calls on the core, errors -> exit codes. Nothing else lives here.

Core modules are imported inside each command (the only function-level imports the package
keeps on purpose) so that `gptcli --help` and `gptcli tokenize` start without loading torch.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from gptcli import __version__, console
from gptcli.console import Failure, Interrupted, UserError

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

SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override a recipe key by dotted path, e.g. --set train.lr=3e-4."),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or status on stderr.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
FreshOpt = Annotated[
    bool, typer.Option("--fresh", help="Start over in a new run folder (runs/NAME-2, ...).")
]
RECIPE_HELP = (
    "A YAML recipe file, or a bundled recipe's name (tiny, finetune/sst2: gptcli inspect "
    "--recipes lists them) when no file of that name is here."
)
# run_dir is a path on purpose (name is a plain name): stated where users set either.
RUN_FOLDER_NOTE = (
    "The run folder is runs/NAME, or the recipe's run_dir: a path, used as given (relative to "
    "the working directory), unlike name."
)


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
        from gptcli import pretrain as pretrain_mod

        run_dir, manifest = pretrain_mod.tokenize(bundled.load(args[0], sets or []))
        if as_json:
            _print_json({"run_dir": str(run_dir), **manifest})
        return
    if sets:
        raise UserError("--set applies to a recipe, not to --tokenizer mode")
    from gptcli import tokenizer

    if count and decode:
        raise UserError("--count and --decode do not go together (--count counts tokens of text)")
    tok = tokenizer.load(tokenizer_path)
    lines = args if args else (line.rstrip("\n") for line in sys.stdin)
    for out_line in tokenizer.pipeline(tok, lines, decode, as_json, count):
        console.out(out_line)


# --------------------------------------------------------------------------- pretrain / finetune


@app.command(
    epilog="Examples:\n\n"
    "  gptcli pretrain recipes/tiny.yaml\n\n"
    "  gptcli pretrain tiny   (the bundled recipe, from any folder)\n\n"
    "  gptcli pretrain recipes/tiny.yaml --set train.max_steps=100 --set model.n_layer=2\n\n"
    "  gptcli pretrain recipes/smoke.yaml --fresh --quiet --json\n\n" + RUN_FOLDER_NOTE,
)
def pretrain(
    recipe_path: Annotated[str, typer.Argument(metavar="RECIPE", help=RECIPE_HELP)],
    sets: SetOpt = None,
    fresh: FreshOpt = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Tokenize if needed, then train from scratch (resuming from the newest checkpoint)."""
    console.set_quiet(quiet)
    from gptcli import bundled

    recipe = bundled.load(recipe_path, sets or [])  # before torch: a bad recipe fails at once
    from gptcli import pretrain as pretrain_mod

    summary = pretrain_mod.pretrain(recipe, fresh=fresh)
    if as_json and summary is not None:  # under torchrun, rank 0 alone speaks for the job
        _print_json(summary)


@app.command(
    epilog="Examples:\n\n"
    "  gptcli finetune recipes/finetune-lm.yaml --set init=runs/tiny\n\n"
    "  gptcli finetune recipes/finetune-lm.yaml --set data.source=my_texts/\n\n"
    "  gptcli finetune finetune/sst2 --set data.source=train.jsonl --set data.dev=dev.jsonl\n\n"
    + RUN_FOLDER_NOTE,
)
def finetune(
    recipe_path: Annotated[str, typer.Argument(metavar="RECIPE", help=RECIPE_HELP)],
    sets: SetOpt = None,
    fresh: FreshOpt = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Continue training the checkpoint named by the recipe's `init` on task data."""
    console.set_quiet(quiet)
    from gptcli import bundled

    recipe = bundled.load(recipe_path, sets or [])  # before torch: a bad recipe fails at once
    from gptcli import finetune as finetune_mod

    summary = finetune_mod.finetune(recipe, fresh=fresh)
    if as_json and summary is not None:  # under torchrun, rank 0 alone speaks for the job
        _print_json(summary)


# --------------------------------------------------------------------------- sample


@app.command(
    epilog="Examples:\n\n"
    '  gptcli sample --prompt "Once upon a time"\n\n'
    '  gptcli sample -c runs/tiny --prompt "One day" --temperature 0 --max-new-tokens 50\n\n'
    '  gptcli sample --prompt "Once" --stop "The end" --min-p 0.05 --repetition-penalty 1.2\n\n'
    "  gptcli sample --prompt-file prompt.txt --num-samples 4 --json\n\n"
    '  gptcli sample -c runs/sst2 --prompt "a gorgeous, witty film"   (a classifier)\n\n'
    "  gptcli sample -c runs/rte --json < rte_dev.jsonl | jq .correct\n\n"
    "  cat prompts.txt | gptcli sample --each-line --seed 1 --json",
)
def sample(
    checkpoint_path: Annotated[
        Optional[str],
        typer.Option(
            "--checkpoint", "-c", help="Checkpoint or run folder (default: newest in ./runs)."
        ),
    ] = None,
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
    max_new_tokens: Annotated[Optional[int], typer.Option(help="Tokens to generate.")] = None,
    temperature: Annotated[Optional[float], typer.Option(help="0 = greedy.")] = None,
    top_k: Annotated[
        Optional[int], typer.Option(help="Keep the k likeliest tokens (0 = off).")
    ] = None,
    top_p: Annotated[
        Optional[float], typer.Option(help="Nucleus mass in (0, 1] (1 = off).")
    ] = None,
    min_p: Annotated[
        Optional[float],
        typer.Option(help="Drop tokens below min-p x the top token's probability (0 = off)."),
    ] = None,
    repetition_penalty: Annotated[
        Optional[float],
        typer.Option(help="> 1 discourages tokens of the prompt and the text so far (1 = off)."),
    ] = None,
    stop: Annotated[
        Optional[list[str]],
        typer.Option("--stop", help="Stop before this text (repeatable); it is not printed."),
    ] = None,
    num_samples: Annotated[
        int, typer.Option(help="Samples per prompt, generated as one batch.")
    ] = 1,
    seed: Annotated[
        Optional[int], typer.Option(help="Same seed and flags give the same text.")
    ] = None,
    dtype: Annotated[
        str,
        typer.Option(help="Weights: auto (bf16 where the hardware has it), fp32 or bf16."),
    ] = "auto",
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
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Generate text from a checkpoint, streaming to stdout; --json: one object per sample.

    A classifier checkpoint prints each input's label distribution (the likeliest first);
    pairs and choices come as JSON lines on stdin, one prediction per line."""
    console.set_quiet(quiet)
    from gptcli import generate

    prompts = _prompts(prompt, prompt_file, each_line)
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
            shown = result["text"] if result.get("chat") else result["prompt"] + result["text"]
            console.out(shown + "\n" + separator, end="")

    generate.run(
        checkpoint_path,
        prompts,
        overrides={
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "top_k": top_k,
            "top_p": top_p,
            "min_p": min_p,
            "repetition_penalty": repetition_penalty,
            "stop": stop,
        },
        seed=seed,
        num_samples=num_samples,
        dtype=dtype,
        on_text=(lambda piece: console.out(piece, end="")) if live else None,
        on_result=show,
        chat=chat,
    )


def _prompts(prompt: str | None, prompt_file: str | None, each_line: bool):
    """The prompts to sample: one text, or (--each-line) every line, read lazily from stdin."""
    if prompt is not None and (prompt_file is not None or each_line):
        raise UserError("--prompt cannot be combined with --prompt-file or --each-line")
    if prompt is not None:
        return [prompt]
    if prompt_file is not None:
        path = Path(prompt_file)
        if not path.is_file():
            raise UserError(f"--prompt-file: {path} not found (pass a UTF-8 text file)")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UserError(f"--prompt-file: {path} is not UTF-8 text") from None
        if each_line:
            return text.splitlines()
        return [text.removesuffix("\n")]  # an editor's final newline is not the prompt's
    if sys.stdin is None or sys.stdin.isatty():
        if each_line:
            raise UserError("--each-line reads prompts from stdin or --prompt-file; none given")
        return [""]
    if each_line:
        return (line.rstrip("\r\n") for line in sys.stdin)
    return [sys.stdin.read()]


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
    "  gptcli inspect runs/tiny --plot loss.png",
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
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Explain what PATH is: config, parameters, training state, metrics, data."""
    console.set_quiet(quiet)
    from gptcli import inspect as inspect_mod

    if sum(x is not None for x in (text, score_file, plot)) > 1:
        raise UserError("use one of --text, --score, --plot at a time")
    if recipes:
        if any(x is not None for x in (path, text, score_file, plot)):
            raise UserError("--recipes lists the bundled recipes: it takes no PATH or option")
        _show(inspect_mod.bundled_recipes(), as_json)
        return
    if path is None:
        raise UserError("inspect needs a PATH (or --recipes to list the bundled recipes)")
    path = inspect_mod.bundled_or_path(path)
    if score_file is not None:
        info = inspect_mod.score(path, score_file)
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


# --------------------------------------------------------------------------- entry point


def _click_error(e: Exception) -> int | None:
    """Exit code for Click's own exceptions (usage errors, --help exits), None for others.

    Matched by class name because newer Typer vendors Click under a private module.
    """
    kinds = {cls.__name__ for cls in type(e).__mro__}
    if "Exit" in kinds:
        return e.exit_code
    if "Abort" in kinds:
        console.stderr.print("interrupted", markup=False)
        return 130
    if "UsageError" in kinds:
        ctx = getattr(e, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx else ""
        console.stderr.print(f"error: {e.format_message()}{hint}", style="red", markup=False)
        return 2
    if "ClickException" in kinds:
        console.stderr.print(f"error: {e.format_message()}", style="red", markup=False)
        return e.exit_code
    return None


def main() -> None:
    """Run the app; map every failure to one line on stderr and its exit code: 2 for bad
    input, 1 for a failure the user cannot fix by changing input, 130/143 for SIGINT/SIGTERM."""
    code = 0
    try:
        app(standalone_mode=False)
    except UserError as e:
        console.stderr.print(f"error: {e}", style="red", markup=False)
        code = 2
    except Failure as e:
        console.stderr.print(f"error: {e}", style="red", markup=False)
        code = 1
    except Interrupted as e:
        console.stderr.print(str(e), markup=False)
        code = e.code
    except KeyboardInterrupt:
        console.stderr.print("interrupted", markup=False)
        code = 130
    except BrokenPipeError:
        # the reader of our stdout went away (e.g. `| head`): not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = 0
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, exit 1
        click_code = _click_error(e)
        if click_code is not None:
            code = click_code
        elif os.environ.get("GPTCLI_DEBUG"):
            raise
        else:
            console.stderr.print(
                f"error: unexpected failure: {type(e).__name__}: {e} "
                "(GPTCLI_DEBUG=1 shows a traceback)",
                style="red",
                markup=False,
            )
            code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
