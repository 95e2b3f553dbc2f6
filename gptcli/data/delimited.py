"""CSV and TSV files with a header row: each row a record, its text field a document."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

from gptcli import tokenizer
from gptcli.console import UserError
from gptcli.data import registry, streams
from gptcli.data.streams import Reader, Reading

size = streams.file_size  # the text's size, for the BPE sample


def _rows(path: Path, reading: Reading) -> Iterator[tuple[str, dict]]:
    tsv = registry.plain_name(path).endswith(".tsv")
    reader = Reader(path, reading.on_bytes)
    try:
        text = io.TextIOWrapper(reader.stream, encoding="utf-8", newline="")
        rows = csv.DictReader(text, delimiter="\t" if tsv else ",", quoting=csv.QUOTE_MINIMAL)
        for n, row in enumerate(rows, 1):
            if n % 1024 == 0:
                reader.report()
            yield f"{path}:{rows.line_num}", dict(row)
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except csv.Error as e:
        raise UserError(f"{path}: not valid {'TSV' if tsv else 'CSV'} ({e})") from None
    except streams.errors_while_reading() as e:
        raise streams.read_error(path, e) from None
    finally:
        reader.close()


def documents(path: Path, reading: Reading) -> Iterator[str]:
    """The text_field column of each row."""
    for where, row in _rows(path, reading):
        value = row.get(reading.text_field)
        if not isinstance(value, str):
            found = ", ".join(k for k in row if k) or "none"
            raise UserError(
                f"{where}: no column {reading.text_field!r} (columns: {found}; set data.text_field)"
            )
        value = tokenizer.check_text(value, where)
        if value.strip():
            yield value


def records(path: Path) -> Iterator[tuple[str, dict]]:
    yield from _rows(path, Reading())
