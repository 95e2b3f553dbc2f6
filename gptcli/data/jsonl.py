"""JSON Lines files: one JSON object per line; a document is its (dotted) text field."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from gptcli import tokenizer
from gptcli.console import UserError
from gptcli.data import streams
from gptcli.data.streams import Reader, Reading
from gptcli.files import get_field

size = streams.file_size  # the text's size, for the BPE sample


def _lines(path: Path, reading: Reading) -> Iterator[tuple[int, str]]:
    """(line number, decoded line) of each line that is not blank."""
    reader = Reader(path, reading.on_bytes)
    try:
        offset = 0
        for lineno, raw in enumerate(reader.stream, 1):
            if lineno % 1024 == 0:
                reader.report()
            line = streams.decode(raw, path, offset, reading.errors, where=f":{lineno}")
            offset += len(raw)
            if line.strip():
                yield lineno, line
    except streams.errors_while_reading() as e:
        raise streams.read_error(path, e) from None
    finally:
        reader.close()


def _parse(line: str, where: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: not valid JSON ({e.msg})") from None


def documents(path: Path, reading: Reading) -> Iterator[str]:
    """One document per line: the (dotted) text_field of each JSON object."""
    field = reading.text_field
    for lineno, line in _lines(path, reading):
        value = get_field(_parse(line, f"{path}:{lineno}"), field)
        if not isinstance(value, str):
            raise UserError(f"{path}:{lineno}: no string field {field!r} (set data.text_field)")
        if reading.errors == "replace":  # a \udcff escape in the JSON: no character, as a bad byte
            value = value.encode("utf-8", "replace").decode("utf-8")
        hint = "fix the text, or set data.errors: replace"
        value = tokenizer.check_text(value, f"{path}:{lineno}", hint)
        if value.strip():
            yield value


def records(path: Path) -> Iterator[tuple[str, dict]]:
    """(where, object) for each line."""
    for lineno, line in _lines(path, Reading()):
        record = _parse(line, f"{path}:{lineno}")
        if not isinstance(record, dict):
            raise UserError(f"{path}:{lineno}: expected a JSON object per line")
        yield f"{path}:{lineno}", record
