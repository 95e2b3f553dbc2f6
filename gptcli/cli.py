"""The Typer layer: flags -> calls on the core, errors -> exit codes. Nothing else lives here.

Core modules are imported inside each command so that `gptcli --help` starts without torch.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated, Optional

import typer

from gptcli import __version__, console
from gptcli.console import Interrupted, UserError

app = typer.Typer(
    name="gptcli",
    help="From raw text to a trained GPT-style model and back to text.\n\n"
    "Typical use: [bold]gptcli pretrain recipes/tiny.yaml[/bold], then "
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
    "  echo '7 42 99' | gptcli tokenize --tokenizer runs/tiny --decode",
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
        bool, typer.Option("--decode", help="Turn ids (space-separated) into text.")
    ] = False,
    sets: SetOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Train the recipe's BPE and write token shards, or encode/decode text in a pipeline."""
    console.set_quiet(quiet)
    if tokenizer_path is None:
        if decode:
            raise UserError("--decode needs --tokenizer PATH")
        if not args or len(args) != 1:
            raise UserError("tokenize takes one RECIPE (or --tokenizer PATH to encode text)")
        from gptcli import checkpoint, data
        from gptcli import recipe as recipe_mod

        recipe = recipe_mod.load(args[0], sets or [])
        run_dir = recipe_mod.run_dir(recipe)
        with checkpoint.RunLock(run_dir):
            data.write_atomic(run_dir / "recipe.yaml", recipe_mod.dump(recipe).encode())
            manifest = data.prepare(recipe, run_dir)
        if as_json:
            _print_json({"run_dir": str(run_dir), **manifest})
        return
    if sets:
        raise UserError("--set applies to a recipe, not to --tokenizer mode")
    from gptcli import tokenizer

    tok = tokenizer.load(tokenizer_path)
    lines = args if args else (line.rstrip("\n") for line in sys.stdin)
    for lineno, line in enumerate(lines, 1):
        if decode:
            text = line.strip()
            try:
                ids = json.loads(text) if text.startswith("[") else [int(t) for t in text.split()]
            except ValueError:
                raise UserError(
                    f"input line {lineno}: expected token ids, got {line[:40]!r}"
                ) from None
            vocab = tok.get_vocab_size()
            bad = [i for i in ids if not isinstance(i, int) or not 0 <= i < vocab]
            if bad:
                raise UserError(f"input line {lineno}: id {bad[0]!r} is outside 0..{vocab - 1}")
            decoded = tokenizer.decode(tok, ids)
            _print_json({"ids": ids, "text": decoded}) if as_json else console.out(decoded)
        else:
            ids = tok.encode(line, add_special_tokens=False).ids
            if as_json:
                _print_json({"text": line, "ids": ids})
            else:
                console.out(" ".join(map(str, ids)))


# --------------------------------------------------------------------------- pretrain / finetune


@app.command(
    epilog="Examples:\n\n"
    "  gptcli pretrain recipes/tiny.yaml\n\n"
    "  gptcli pretrain recipes/tiny.yaml --set train.max_steps=100 --set model.n_layer=2\n\n"
    "  gptcli pretrain recipes/smoke.yaml --fresh --quiet --json",
)
def pretrain(
    recipe_path: Annotated[str, typer.Argument(metavar="RECIPE", help="A YAML recipe.")],
    sets: SetOpt = None,
    fresh: FreshOpt = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Tokenize if needed, then train from scratch (resuming from the newest checkpoint)."""
    console.set_quiet(quiet)
    from gptcli import recipe as recipe_mod
    from gptcli import train

    summary = train.pretrain(recipe_mod.load(recipe_path, sets or []), fresh=fresh)
    if as_json:
        _print_json(summary)


@app.command(
    epilog="Examples:\n\n"
    "  gptcli finetune recipes/finetune-lm.yaml --set init=runs/tiny\n\n"
    "  gptcli finetune recipes/finetune-lm.yaml --set data.source=my_texts/",
)
def finetune(
    recipe_path: Annotated[str, typer.Argument(metavar="RECIPE", help="A YAML finetune recipe.")],
    sets: SetOpt = None,
    fresh: FreshOpt = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Continue training the checkpoint named by the recipe's `init` on task data."""
    console.set_quiet(quiet)
    from gptcli import finetune as finetune_mod
    from gptcli import recipe as recipe_mod

    summary = finetune_mod.finetune(recipe_mod.load(recipe_path, sets or []), fresh=fresh)
    if as_json:
        _print_json(summary)


# --------------------------------------------------------------------------- sample


@app.command(
    epilog="Examples:\n\n"
    '  gptcli sample --prompt "Once upon a time"\n\n'
    '  gptcli sample -c runs/tiny --prompt "One day" --temperature 0 --max-new-tokens 50\n\n'
    "  echo 'Once upon a time' | gptcli sample --seed 1 --json",
)
def sample(
    checkpoint_path: Annotated[
        Optional[str],
        typer.Option(
            "--checkpoint", "-c", help="Checkpoint or run folder (default: newest in ./runs)."
        ),
    ] = None,
    prompt: Annotated[
        Optional[str], typer.Option("--prompt", "-p", help="Prompt (else stdin).")
    ] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="Tokens to generate.")] = None,
    temperature: Annotated[Optional[float], typer.Option(help="0 = greedy.")] = None,
    top_k: Annotated[
        Optional[int], typer.Option(help="Keep the k likeliest tokens (0 = off).")
    ] = None,
    top_p: Annotated[
        Optional[float], typer.Option(help="Nucleus mass in (0, 1] (1 = off).")
    ] = None,
    seed: Annotated[
        Optional[int], typer.Option(help="Same seed and flags give the same text.")
    ] = None,
    stream: Annotated[
        bool, typer.Option("--stream/--no-stream", help="Print tokens as they come.")
    ] = True,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Generate text from a checkpoint, streaming to stdout."""
    console.set_quiet(quiet)
    from gptcli import generate

    if prompt is None:
        prompt = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
    result = generate.run(
        checkpoint_path,
        prompt,
        overrides={
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "top_k": top_k,
            "top_p": top_p,
        },
        seed=seed,
        on_text=None if (as_json or not stream) else lambda piece: console.out(piece, end=""),
    )
    if as_json:
        _print_json(result)
    elif stream:
        console.out("")
    else:
        console.out(result["prompt"] + result["text"])


# --------------------------------------------------------------------------- inspect


@app.command(
    name="inspect",
    epilog="Examples:\n\n"
    "  gptcli inspect runs/tiny\n\n"
    "  gptcli inspect runs/tiny/checkpoints/step-0000600 --json | jq .params.total\n\n"
    "  gptcli inspect recipes/tiny.yaml\n\n"
    '  gptcli inspect runs/tiny --text "Once upon a time"\n\n'
    "  gptcli inspect runs/tiny --score ../shared/data/tinystories/TinyStories-valid.head.txt\n\n"
    "  gptcli inspect runs/tiny --plot loss.png",
)
def inspect_cmd(
    path: Annotated[
        str, typer.Argument(help="Run folder, checkpoint, tokenizer.json, shard folder or recipe.")
    ],
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
    if score_file is not None:
        info = inspect_mod.score(path, score_file)
    else:
        info = inspect_mod.describe(path, text=text)
    if plot is not None:
        if info["kind"] != "run":
            raise UserError(f"--plot draws a run's loss curve; {path} is a {info['kind']}")
        info["plot"] = inspect_mod.plot_png(info["curve"], plot, title=path)
        console.info(f"inspect: wrote {info['plot']}")
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
        str, typer.Option("--format", "-f", help="hf (transformers folder) or gguf (llama.cpp).")
    ],
    out: Annotated[str, typer.Option("--out", "-o", help="Folder to write (new or empty).")],
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Write a checkpoint where other tools can use it: HF transformers or GGUF."""
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
    """Run the app; map every failure to one line on stderr and the exit code SPEC.md names."""
    code = 0
    try:
        app(standalone_mode=False)
    except UserError as e:
        console.stderr.print(f"error: {e}", style="red", markup=False)
        code = 2
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
