"""Parquet and Arrow IPC files, read with pyarrow (the `parquet` extra) a batch of rows at a time.

Only the text column is read for documents, batch by batch, so memory stays bounded by a row
group whatever the file's size. A dotted data.text_field names a field of a struct column.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gptcli.console import UserError
from gptcli.data import registry
from gptcli.data.streams import Reading

BATCH_ROWS = 4096  # rows converted to Python strings at a time


def pyarrow() -> Any:
    """pyarrow with its Parquet and IPC readers, or exit 2 saying how to install it."""
    try:
        import pyarrow
        import pyarrow.compute
        import pyarrow.ipc
        import pyarrow.parquet
    except ImportError:
        raise UserError(
            "reading Parquet and Arrow files needs pyarrow: pip install 'gptcli[parquet]'"
        ) from None
    return pyarrow


def _unreadable(path: Path, e: BaseException) -> UserError:
    fmt = registry.format_of(path).name.capitalize()
    reason = " ".join(str(e).split()) or type(e).__name__
    return UserError(f"{path}: not a readable {fmt} file ({reason})")


class Table:
    """One Parquet or Arrow file: its schema, row count (when known) and record batches."""

    def __init__(self, path: Path) -> None:
        self.pa = pa = pyarrow()
        self.path = path
        self.parquet = registry.format_of(path).name == "parquet"
        try:
            if self.parquet:
                self.file = pa.parquet.ParquetFile(path)
                self.schema, self.rows = self.file.schema_arrow, self.file.metadata.num_rows
            else:
                self.file = self._open_ipc(pa.memory_map(str(path)))
                self.schema, self.rows = self.file.schema, None
        except (pa.ArrowException, OSError) as e:
            raise _unreadable(path, e) from None

    def _open_ipc(self, source: Any) -> Any:
        """An Arrow file reader, or a stream reader (datasets.save_to_disk writes streams)."""
        try:
            return self.pa.ipc.open_file(source)
        except self.pa.ArrowInvalid:
            source.seek(0)
            return self.pa.ipc.open_stream(source)

    def batches(self, columns: list[str] | None) -> Iterator[Any]:
        try:
            if self.parquet:
                yield from self.file.iter_batches(batch_size=BATCH_ROWS, columns=columns)
            elif isinstance(self.file, self.pa.ipc.RecordBatchFileReader):
                for i in range(self.file.num_record_batches):
                    batch = self.file.get_batch(i)
                    yield batch.select(columns) if columns else batch
            else:
                for batch in self.file:
                    yield batch.select(columns) if columns else batch
        except (self.pa.ArrowException, OSError) as e:
            raise _unreadable(self.path, e) from None

    def text_column(self, field: str) -> list[str]:
        """The path of struct fields to a string column, checked against the schema."""
        names = field.split(".")
        schema_type: Any = self.schema
        for depth, name in enumerate(names):
            index = schema_type.get_field_index(name) if _has_fields(schema_type) else -1
            if index < 0:
                found = ", ".join(_field_names(schema_type)) or "none"
                where = ".".join(names[:depth]) or "the file"
                raise UserError(
                    f"{self.path}: no column {field!r} ({where} has: {found}; set "
                    "data.text_field, or text_field in the source's {path, text_field} form)"
                )
            schema_type = schema_type.field(index).type
        if not is_text(self.pa, schema_type):
            raise UserError(
                f"{self.path}: column {field!r} holds {schema_type}, not text (set "
                "data.text_field to a string column)"
            )
        return names


def is_text(pa: Any, t: Any) -> bool:
    """string, large_string or string_view: the types whose values are Python str."""
    view = getattr(pa.types, "is_string_view", lambda t: False)
    return pa.types.is_string(t) or pa.types.is_large_string(t) or view(t)


def _has_fields(t: Any) -> bool:
    return hasattr(t, "get_field_index")


def _field_names(t: Any) -> list[str]:
    return [f.name for f in t] if _has_fields(t) else []


def documents(path: Path, reading: Reading) -> Iterator[str]:
    """The non-empty strings of the text column; null and blank rows are counted as skipped."""
    table = Table(path)
    names = table.text_column(reading.text_field)
    size, done, reported = path.stat().st_size, 0, 0
    for batch in table.batches([names[0]]):
        column = batch.column(0)
        if len(names) > 1:
            column = table.pa.compute.struct_field(column, names[1:])
        values = column.to_pylist()
        kept = [v for v in values if v and not v.isspace()]  # None (null) is falsy too
        reading.skipped["null text"] += column.null_count
        reading.skipped["blank text"] += len(values) - len(kept) - column.null_count
        yield from kept
        done += len(batch)
        if table.rows:
            now = size * done // table.rows
            reading.on_bytes(now - reported)
            reported = now
    reading.on_bytes(size - reported)


def size(path: Path, text_field: str) -> int:
    """The text column's bytes before compression (Parquet), else the file's size."""
    table = Table(path)
    if not table.parquet:
        return path.stat().st_size
    meta, total = table.file.metadata, 0
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            name = group.column(c).path_in_schema
            if name == text_field or name.startswith(f"{text_field}."):
                total += group.column(c).total_uncompressed_size
    return total or path.stat().st_size


def records(path: Path) -> Iterator[tuple[str, dict]]:
    """(where, row) for each row, all columns."""
    n = 0
    for batch in Table(path).batches(None):
        for row in batch.to_pylist():
            n += 1
            yield f"{path}: row {n}", row
