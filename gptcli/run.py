"""The run folder: its name (and `--fresh`), its lock, its `recipe.yaml` and its provenance.

Every command that writes into runs/<name>/ goes through here, so there is one notion of which
folder a recipe trains in, one lock, and one place that records how a run was produced.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tokenizers

from gptcli import __version__, checkpoint, console
from gptcli import recipe as recipe_mod
from gptcli.console import UserError
from gptcli.files import write_atomic
from gptcli.recipe import Recipe
from gptcli.tokenizer import TOKENIZER_FILE

if TYPE_CHECKING:  # device imports torch, which `gptcli tokenize` never needs
    from gptcli.device import Dist

RECIPE_FILE = "recipe.yaml"


def folder(recipe: Recipe) -> Path:
    """run_dir when the recipe sets it, else runs/<name>."""
    return Path(recipe.run_dir) if recipe.run_dir else Path("runs") / recipe.name


def fresh_folder(base: Path) -> Path:
    """--fresh: runs/<name>, or the first free runs/<name>-2, -3, ... (the old one is kept)."""
    if not base.exists() or not any(base.iterdir()):
        return base
    n = 2
    while (base.parent / f"{base.name}-{n}").exists():
        n += 1
    return base.parent / f"{base.name}-{n}"


class RunLock:
    """An exclusive flock on runs/<name>/.lock: released by the kernel even after kill -9.

    When the command fails or is interrupted, the temp files it left go, and so do the folders
    it created (runs/ too) while they hold nothing of value yet (see discard_unfinished)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / ".lock"
        self.fd: int | None = None
        self.created: Path | None = None  # the outermost folder this lock makes (runs/ too)

    def __enter__(self) -> RunLock:
        run_dir = top = self.path.parent
        while not top.parent.exists():
            top = top.parent
        self.created = None if run_dir.exists() else top
        with console.writing(run_dir):
            run_dir.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise UserError(
                f"{self.path.parent} is in use by another gptcli process "
                "(wait for it, or use --fresh for a new run folder)"
            ) from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, str(os.getpid()).encode())
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if self.fd is not None:
            if exc is not None:
                discard_unfinished(self.path.parent, self.created)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def is_temp(path: Path) -> bool:
    """Files written under a temp name and renamed when complete (.NAME.tmp, .NAME.PID.tmp,
    checkpoints/.tmp-step-...)."""
    name = path.name
    return name.startswith(".tmp-") or (name.startswith(".") and name.endswith((".tmp", ".part")))


def discard_unfinished(run_dir: Path, created: Path | None) -> None:
    """After a failure or an interruption: remove the temp files in run_dir, and the folders
    this command created (created: the outermost of them) when run_dir holds nothing of value
    (the lock, empty folders, a copy of stdin, a tokenizer that no shards were made with)."""
    for folder in (run_dir, run_dir / "data", run_dir / "checkpoints"):
        for path in folder.glob(".*") if folder.is_dir() else []:
            if is_temp(path) and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif is_temp(path):
                path.unlink(missing_ok=True)
    if not created:
        return
    disposable = {Path(".lock"), Path("data") / "stdin.txt"}
    if not (run_dir / "data" / "manifest.json").is_file():
        disposable.add(Path(TOKENIZER_FILE))
    files = {p.relative_to(run_dir) for p in run_dir.rglob("*") if not p.is_dir()}
    if files <= disposable:
        shutil.rmtree(created, ignore_errors=True)  # still locked: no one else is in it


def open_run(recipe: Recipe, fresh: bool, dist: Dist) -> tuple[Path, Any]:
    """The folder a job trains in, and its lock (a context; rank 0 alone holds it).

    Under torchrun, --fresh takes the first free name as rank 0 saw it: a rank that looked
    after rank 0 had made runs/NAME-2 would otherwise go on to runs/NAME-3.
    """
    run_dir = folder(recipe)
    if fresh:
        run_dir = fresh_folder(run_dir)
        if dist.world > 1:
            import torch.distributed as tdist  # torch is loaded only where training needs it

            box = [str(run_dir)]
            tdist.broadcast_object_list(box, src=0)
            run_dir = Path(box[0])
    return run_dir, RunLock(run_dir) if dist.main else contextlib.nullcontext()


def write_recipe(run_dir: Path, recipe: Recipe) -> None:
    """recipe.yaml: the resolved recipe (after --set) the run was produced with."""
    write_atomic(run_dir / RECIPE_FILE, recipe_mod.dump(recipe).encode())


def trains(run_dir: Path, recipe: Recipe) -> bool:
    """Whether training the recipe in run_dir takes any step (a finished run takes none)."""
    newest = checkpoint.newest_in_run(run_dir)
    return newest is None or checkpoint.step_of(newest) < recipe.train.max_steps


def record_recipe(run_dir: Path, recipe: Recipe, working: bool) -> None:
    """recipe.yaml describes what produced the run's contents: written when new, rewritten only
    when this command works (tokenizes or trains), never by a command that changes nothing."""
    if working or not (run_dir / RECIPE_FILE).is_file():
        write_recipe(run_dir, recipe)


def recipe_of(ckpt: Path) -> Recipe | None:
    """The recipe of the run a gptcli checkpoint belongs to (RUN/checkpoints/step-N), if any:
    an HF folder or a checkpoint copied elsewhere has none."""
    if ckpt.parent.name != "checkpoints" or not checkpoint.is_checkpoint(ckpt):
        return None
    path = ckpt.parent.parent / RECIPE_FILE
    return recipe_mod.load(path) if path.is_file() else None


def git_commit() -> str:
    """The commit of the gptcli source doing the training (+ '-dirty' for local edits)."""
    src = str(Path(__file__).resolve().parent)
    try:
        head = subprocess.run(
            ["git", "-C", src, "rev-parse", "HEAD"], capture_output=True, text=True
        )
        if head.returncode != 0:
            return "unknown"  # installed from a wheel or sdist: no repository to ask
        status = ["git", "-C", src, "status", "--porcelain", "--untracked-files=no"]
        dirty = subprocess.run(status, capture_output=True, text=True).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except OSError:
        return "unknown"


def versions(torch_version: str) -> dict[str, str]:
    """What produced a checkpoint: state.json's `versions`."""
    return {
        "gptcli": __version__,
        "torch": torch_version,
        "tokenizers": tokenizers.__version__,
        "git": git_commit(),
    }
