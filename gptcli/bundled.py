"""The recipes that ship inside the package, found by name: `gptcli pretrain tiny` works anywhere.

The files live in gptcli/recipes/; a checkout's top-level recipes/ is a link to that folder, so
`recipes/tiny.yaml` and `tiny` are the same file there. Relative paths inside any recipe (data,
init, run_dir) are read from the working directory, never from the recipe's folder: a bundled
recipe's folder is inside the installed package, where no user data lives.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

from gptcli import console
from gptcli import recipe as recipe_mod
from gptcli.console import UserError
from gptcli.data import registry
from gptcli.recipe import Recipe, task_fields

FOLDER = Path(__file__).resolve().parent / "recipes"
# Folders of FOLDER that hold other YAML (lm-eval task definitions), not recipes.
NOT_RECIPES = {"eval"}
SUFFIXES = (".yaml", ".yml")


def names() -> dict[str, Path]:
    """Each bundled recipe's name (`tiny`, `finetune/sst2`) and file, top-level ones first."""
    found = {}
    for path in FOLDER.rglob("*.yaml"):
        rel = path.relative_to(FOLDER)
        if rel.parts[0] not in NOT_RECIPES:
            found[rel.with_suffix("").as_posix()] = path
    return dict(sorted(found.items(), key=lambda kv: (kv[0].count("/"), kv[0])))


def find(arg: str) -> Path | None:
    """The bundled file a bare name means, or None: a file of that name in the working
    directory wins, and a name with a .yaml suffix is a path."""
    if Path(arg).is_file() or arg.endswith(SUFFIXES):
        return None
    return names().get(arg)


def say_which(arg: str, path: Path) -> None:
    """Log the file a bundled name stood for (after it loaded: an error stays one line); under
    torchrun, rank 0 alone says it."""
    if str(path) != arg and os.environ.get("RANK", "0") == "0":
        console.info(f"recipe: {arg} is the bundled {path}")


def resolve(arg: str) -> Path:
    """The recipe file ARG (a path or a bundled recipe's name) means."""
    path = Path(arg)
    if path.is_file():
        return path
    found = find(arg)
    if found is not None:
        return found
    stem = arg.removeprefix("recipes/").removesuffix(".yaml")
    hint = f"; the bundled copy is named '{stem}'" if stem in names() else ""
    raise UserError(
        f"recipe not found: {arg} (pass a .yaml file, or the name of a bundled recipe: "
        f"gptcli inspect --recipes lists them){hint}"
    )


def is_bundled(path: Path) -> bool:
    """Whether PATH is one of the package's recipes (in a checkout, also through recipes/)."""
    return path.resolve().is_relative_to(FOLDER)


def load(arg: str, overrides: list[str]) -> Recipe:
    """Load the recipe ARG means; a bundled one must find its data before any work starts."""
    path = resolve(arg)
    recipe = recipe_mod.load(path, overrides)
    if is_bundled(path):
        check_data(arg, recipe)
    say_which(arg, path)
    return recipe


# --------------------------------------------------------------------------- data a recipe needs


def local_data(recipe: Recipe) -> list[tuple[str, str]]:
    """(key, path) of each local file or folder the recipe reads."""
    paths = [("data.source", source.path) for source in recipe.data.sources()]
    dev = recipe.data.dev_source()
    paths += [("data.dev", dev.path)] if dev else []
    return [(key, p) for key, p in paths if registry.is_local(p)]


def data_format(recipe: Recipe) -> str:
    """What the recipe's data files hold, in words, for the message that asks for them."""
    task = recipe.task
    if task.kind == "lm":
        return (
            "text (a .txt file, a folder of .txt/.md files, a .jsonl with a "
            f"'{recipe.data.text_field}' field on each line, or a .csv/.parquet/.arrow file "
            "with that column)"
        )

    fields = task_fields(task)
    if task.kind == "sft":
        return (
            f"a .jsonl, .tsv, .csv or .parquet file of examples with fields {' and '.join(fields)} "
            "(or a .jsonl whose 'messages' hold {role, content} turns)"
        )
    labels = f" ({' or '.join(task.label_names)})" if task.label_names else ""
    return (
        f"a .jsonl, .tsv, .csv or .parquet file of examples with fields {', '.join(fields)} "
        f"and {task.label_field}{labels}"
    )


def check_data(arg: str, recipe: Recipe) -> None:
    """Exit 2 naming the keys to set when a bundled recipe's data files are not here."""
    missing = [(key, p) for key, p in local_data(recipe) if not Path(p).expanduser().exists()]
    if not missing:
        return
    paths = " and ".join(p for _, p in missing)
    keys = dict(missing)
    sets = " ".join(f"--set {key}=PATH" for key in keys)
    each = "each " if len(keys) > 1 else ""
    raise UserError(
        f"recipe {arg}: its data {paths} is not here (relative paths are read from the working "
        f"directory); pass yours with {sets}: {each}{data_format(recipe)}"
    )


# --------------------------------------------------------------------------- the listing


def summary(path: Path) -> str:
    """What a recipe trains: the first line of its file, a comment."""
    with open(path, encoding="utf-8") as f:
        first = f.readline().strip()
    return first.lstrip("#").strip() if first.startswith("#") else ""


def data_needed(recipe: Recipe) -> str:
    """The data (and starting checkpoint) a recipe reads, in short."""
    sources = recipe.data.sources()
    parts = [registry.kind_of(s.path).listing.format(**asdict(s)) for s in sources]
    if dev := recipe.data.dev_source():
        parts.append(f"dev {dev.path}")
    if recipe.init:
        parts.append(f"starts from {recipe.init}")
    return ", ".join(parts)
