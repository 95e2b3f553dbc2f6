"""Small file helpers every layer uses: hashing, atomic writes, gptcli's cache folder, the
dotted fields of JSON records read from files, and the one reader of the JSON files gptcli
writes into run and checkpoint folders (typed with the recipe's own rules).

Atomic means a reader (or a crash, even kill -9) sees the old file or the new one, never half
of one: the bytes go to a temp name in the same folder, are synced, then renamed into place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gptcli import console
from gptcli.console import UserError
from gptcli.recipe import BadValue, typed_value

READ_CHUNK = 1 << 20  # bytes hashed at a time


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read a chunk at a time (corpora can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(READ_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def atomic_target(path: Path) -> Iterator[Path]:
    """A temp path to write path's new content to; renamed over path when the block ends
    without an error, removed otherwise. For writers that want a file name (tokenizers, PNGs)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        tmp.replace(path)
    finally:
        with contextlib.suppress(OSError):  # e.g. the folder itself could not be made
            tmp.unlink(missing_ok=True)


def write_atomic(path: Path, data: bytes) -> None:
    """Write bytes to path atomically; a failure names the path in one line."""
    with console.writing(path), atomic_target(path) as tmp:
        tmp.write_bytes(data)


def write_folder(out: Path, write: Callable[[Path], None]) -> Path:
    """An export's --out folder: built (write fills it) in a temp sibling and renamed into
    place; an existing folder that is not empty is refused, never touched."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not empty (choose a new --out)")
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    try:
        with console.writing(f"--out {out}"):
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            write(tmp)
            if out.exists():
                out.rmdir()
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def umask_mode(path: Path) -> None:
    """Give a file the mode the user's umask asks for (0666 less the umask), as plain open()
    would: some writers (safetensors) create files 0600, unreadable to the user's group."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def fsync_dir(path: Path) -> None:
    """Make a rename inside path durable (the directory entry itself is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def cache_dir() -> Path:
    """$GPTCLI_CACHE, else gptcli/ under $XDG_CACHE_HOME or ~/.cache: downloads, probes."""
    if os.environ.get("GPTCLI_CACHE"):
        return Path(os.environ["GPTCLI_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gptcli"


def get_field(record: object, dotted: str) -> object:
    """record["a"]["b"] for "a.b", or None when any part is missing."""
    for part in dotted.split("."):
        if not isinstance(record, dict) or part not in record:
            return None
        record = record[part]
    return record


# --------------------------------------------------------------------------- JSON gptcli wrote


def read_json(path: Path, newest: int | None = None, known: set[str] | None = None) -> dict:
    """A JSON object gptcli wrote, or exit 2 naming path: not valid JSON, not an object, a
    format_version newer than `newest` (when given), or a key outside `known` (when given)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(data).__name__}")
    if newest is not None:
        version = data.get("format_version", 0)
        if type(version) is not int or version < 0:
            raise UserError(f"{path}: key 'format_version' must be an integer, got {version!r}")
        if version > newest:
            raise UserError(
                f"{path}: format_version {version} is newer than this gptcli reads "
                f"({newest}); upgrade gptcli"
            )
    if known is not None:
        unknown = sorted(set(data) - known - {"format_version"})
        if unknown:
            raise UserError(f"{path}: unknown key {unknown[0]!r} (written by a newer gptcli?)")
    return data


@contextmanager
def naming_file(path: Path, prefix: str = "") -> Iterator[None]:
    """Turn a bad value found by the recipe's types and checks into one line naming the file
    and its own key (the recipe key's prefix, e.g. 'model.', taken off)."""
    try:
        yield
    except BadValue as e:
        key = e.key.removeprefix(prefix)
        raise UserError(f"{path}: key '{key}' must be {e.expected}, got {e.value!r}") from None


def typed_fields(
    path: Path, data: dict, hints: dict[str, Any], prefix: str = "", strip: str | None = None
) -> dict:
    """data's entries that hints names, each checked against its type as a recipe key of that
    type would be (prefix + name): exit 2 naming the file, the key (less strip, by default
    the prefix) and what was expected."""
    with naming_file(path, prefix if strip is None else strip):
        return {k: typed_value(prefix + k, v, hints[k]) for k, v in data.items() if k in hints}
