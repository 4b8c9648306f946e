"""Which IDs an existing output holds, as successes or only as error records, in any format.

One streaming pass over the output (a JSON document is read whole, see agents(7)); every format
is judged by the one error-record predicate of :mod:`agents.contract.error_record`, and every ID
by its canonical form. The scan also notes IDs held by more than one record (an older crash can
leave an error record and the success that superseded it), which the writer compacts.
"""

from __future__ import annotations

import csv
import io
import os
import sqlite3
from dataclasses import dataclass, field

import orjson

from agents.contract.error_record import is_error, is_error_record
from agents.contract.ids import ID_KEY, canonical_id
from agents.errors import InvalidID, TargetError
from agents.formats._io import utf8_text
from agents.formats.csv import delimiter_for
from agents.formats.sqlite import quote_name

#: The table agents-write fills when none is named.
DEFAULT_TABLE = "records"


@dataclass(frozen=True)
class Output:
    """An output as agents-write writes it: what ``--resume`` and ``--append`` agree on."""

    path: str
    format: str
    table: str | None = None  # SQLite: the table (None: the default)
    delimiter: str | None = None  # CSV/TSV: -d, when not the format's own

    @property
    def table_name(self) -> str:
        return self.table or DEFAULT_TABLE


@dataclass
class DoneIDs:
    """IDs present in an output: those that succeeded, those that only failed, and those held
    by more than one record."""

    succeeded: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    repeated: set[str] = field(default_factory=set)
    records: int = 0  # records (rows, lines) seen, with or without an ID
    without_id: int = 0  # records that carry no usable ID
    tables: list[str] = field(default_factory=list)  # SQLite: tables with an ID column

    def add(self, record_id: object, failed: bool) -> None:
        self.records += 1
        try:
            key = canonical_id(record_id)
        except InvalidID:
            self.without_id += 1
            return
        if key in self.succeeded or key in self.failed:
            self.repeated.add(key)
        if not failed:
            self.succeeded.add(key)
            self.failed.discard(key)
        elif key not in self.succeeded:
            self.failed.add(key)

    @property
    def empty(self) -> bool:
        return not self.records


def done_ids(output: Output) -> DoneIDs:
    """The IDs an existing output holds; an absent or empty output holds none."""
    done = DoneIDs()
    path, fmt = output.path, output.format
    if not os.path.exists(path) or (fmt != "sqlite" and os.path.getsize(path) == 0):
        return done
    try:
        if fmt == "jsonl":
            _jsonl_ids(path, done)
        elif fmt in ("csv", "tsv"):
            _csv_ids(path, delimiter_for(fmt, output.delimiter), done)
        elif fmt == "json":
            _json_ids(path, done)
        elif fmt == "sqlite":
            _sqlite_ids(path, output.table_name, done)
    except PermissionError:
        raise TargetError(f"{path}: cannot read the existing output: permission denied") from None
    return done


def _jsonl_ids(path: str, done: DoneIDs) -> None:
    with open(path, "rb") as stream:
        for number, line in enumerate(stream, 1):
            if not line.endswith(b"\n"):
                break  # a last line cut short by a crash is not done (agents-write repairs it)
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                raise TargetError(
                    f"{path}:{number}: the existing output is not valid JSONL",
                    "fix or move that line, or write to a new file",
                ) from None
            if isinstance(record, dict):
                done.add(record.get(ID_KEY), is_error_record(record))


def csv_header(path: str, delimiter: str) -> list[str] | None:
    """The header row of a CSV file (None when it is empty)."""
    with open(path, "rb") as stream:
        text = utf8_text(stream)
        try:
            return next(csv.reader(text, delimiter=delimiter), None)
        except (csv.Error, UnicodeDecodeError) as error:
            raise TargetError(f"{path}: not a readable CSV file: {error}") from None


def _csv_ids(path: str, delimiter: str, done: DoneIDs) -> None:
    with open(path, "rb") as stream:
        ends_whole = _ends_with_newline(stream)
        text = utf8_text(stream)
        reader = csv.reader(text, delimiter=delimiter)
        try:
            header = next(reader, None)
            if not header:
                return
            id_at = header.index(ID_KEY) if ID_KEY in header else None
            error_at = header.index("error") if "error" in header else None
            type_at = header.index("error_type") if "error_type" in header else None
            previous: list[str] | None = None
            for row in reader:
                if previous is not None:
                    _csv_row(previous, id_at, error_at, type_at, done)
                previous = row
            if previous is not None and ends_whole:  # a last row cut short is not done
                _csv_row(previous, id_at, error_at, type_at, done)
        except (csv.Error, UnicodeDecodeError) as error:
            raise TargetError(
                f"{path}: the existing output is not readable CSV: {error}",
                "fix or move it, or write to a new file",
            ) from None


def _cell(row: list[str], at: int | None) -> str | None:
    return row[at] if at is not None and at < len(row) else None


def _csv_row(
    row: list[str], id_at: int | None, error_at: int | None, type_at: int | None, done: DoneIDs
) -> None:
    if not row:
        return
    record_id = _cell(row, id_at)
    done.add(
        record_id if record_id != "" else None,
        is_error(_cell(row, error_at), _cell(row, type_at)),
    )


def _ends_with_newline(stream: io.BufferedReader) -> bool:
    stream.seek(0, os.SEEK_END)
    if stream.tell() == 0:
        return True
    stream.seek(-1, os.SEEK_END)
    ends = stream.read(1) == b"\n"
    stream.seek(0)
    return ends


def _json_ids(path: str, done: DoneIDs) -> None:
    with open(path, "rb") as stream:
        data = stream.read()
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        records = torn_json_records(path, data)[0]
    else:
        items = document if isinstance(document, list) else [document]
        records = [item for item in items if isinstance(item, dict)]
    for record in records:
        done.add(record.get(ID_KEY), is_error_record(record))


def torn_json_records(path: str, data: bytes) -> tuple[list[dict[str, object]], int]:
    """Records of a JSON output in agents-write's one-per-line layout whose end a crash tore
    off, and how many bytes of the torn end are dropped."""
    lines = data.split(b"\n")
    if not lines or lines[0].strip() != b"[":
        raise TargetError(
            f"{path}: the existing output is not valid JSON",
            "fix or move it, or write to a new file",
        )
    records: list[dict[str, object]] = []
    kept = len(lines[0]) + 1
    for line in lines[1:]:
        body = line.rstrip().removesuffix(b",")
        try:
            record = orjson.loads(body)
        except orjson.JSONDecodeError:
            break
        if not isinstance(record, dict):
            break
        records.append(record)
        kept += len(line) + 1
    return records, max(0, len(data) - kept)


def _sqlite_ids(path: str, table: str, done: DoneIDs) -> None:
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            done.tables = _tables_with_ids(connection)
            columns = _columns(connection, table)
            if ID_KEY not in columns:
                return
            selected = [
                quote_name(key) if key in columns else "NULL"
                for key in (ID_KEY, "error", "error_type")
            ]
            rows = connection.execute(f"SELECT {', '.join(selected)} FROM {quote_name(table)}")
            for record_id, error, error_type in rows:
                done.add(record_id, is_error(error, error_type))
        finally:
            connection.close()
    except sqlite3.DatabaseError as error:
        raise TargetError(f"{path}: not a SQLite database ({error})") from None


def _columns(connection: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in connection.execute(f"PRAGMA table_info({quote_name(table)})")}


def _tables_with_ids(connection: sqlite3.Connection) -> list[str]:
    names = [
        row[0]
        for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
        )
    ]
    return [name for name in names if ID_KEY in _columns(connection, name)]
