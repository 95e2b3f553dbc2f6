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


class Lines:
    """The file's lines as the csv reader takes them, counting where each record starts (the
    reader tells only where one ends) and whether the file's end was reached."""

    def __init__(self, lines: Iterator[str]) -> None:
        self.lines = lines
        self.count = 0  # lines read so far
        self.start = 1  # the line the record being read starts on
        self.in_record = False
        self.ended = False

    def __iter__(self) -> Lines:
        return self

    def __next__(self) -> str:
        try:
            line = next(self.lines)
        except StopIteration:
            self.ended = True
            raise
        self.count += 1
        if not self.in_record:  # blank lines between records are skipped by the reader
            self.in_record = bool(line.strip())
            self.start = self.count
        return line

    def next_record(self) -> None:
        self.in_record = False


def check_closed(lines: Lines, path: Path) -> None:
    """A record that needed the end of the file to end was inside a quoted field: the quote
    that opened it is never closed, and the csv module would make the rest of the file one
    value (it reads to the end of a line otherwise)."""
    if lines.ended:
        raise UserError(
            f"{path}:{lines.start}: a quoted field in the record on this line is never closed "
            '(the rest of the file would be one value); close it, or write a " inside a quoted '
            'field as ""'
        )


def _rows(path: Path, reading: Reading) -> Iterator[tuple[str, dict]]:
    tsv = registry.plain_name(path).endswith(".tsv")
    reader = Reader(path, reading.on_bytes)
    lines = Lines(io.TextIOWrapper(reader.stream, encoding="utf-8", newline=""))
    try:
        rows = csv.DictReader(lines, delimiter="\t" if tsv else ",", quoting=csv.QUOTE_MINIMAL)
        if rows.fieldnames is not None:  # the header
            check_closed(lines, path)
            lines.next_record()
        for n, row in enumerate(rows, 1):
            check_closed(lines, path)
            if n % 1024 == 0:
                reader.report()
            yield f"{path}:{rows.line_num}", dict(row)
            lines.next_record()
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except csv.Error as e:
        kind = "TSV" if tsv else "CSV"
        raise UserError(f"{path}:{lines.start}: not valid {kind} ({e})") from None
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
