"""Which IDs an existing output already holds, and the repair of a torn last line.

This module is the only owner of the rule: an ID whose record in the output is a success is done;
an ID that only has an error record is to be tried again, and its newer record replaces the error.
"""

from __future__ import annotations

import csv
import io
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field

import orjson

from agents.errors import TargetError
from agents.formats.csv import delimiter_for
from agents.formats.sqlite import quote_name
from agents.records import ERROR_KEYS, ID_KEY, InvalidID, canonical_id, is_error_record


@dataclass
class DoneIDs:
    """IDs present in an output: those that succeeded and those that only failed."""

    succeeded: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)

    def add(self, record_id: object, failed: bool) -> None:
        try:
            key = canonical_id(record_id)
        except InvalidID:
            return
        if failed:
            if key not in self.succeeded:
                self.failed.add(key)
        else:
            self.succeeded.add(key)
            self.failed.discard(key)


def repair_torn_jsonl(path: str) -> int:
    """Drop a last line cut short by a crash; returns the bytes removed (0 if none).

    A last line without its newline that still parses as an object is kept (a newline is added),
    since no prefix of a JSON object is itself a complete object.
    """
    size = os.path.getsize(path)
    if size == 0:
        return 0
    with open(path, "r+b") as stream:
        start = _last_line_start(stream, size)
        stream.seek(start)
        tail = stream.read()
        if tail.endswith(b"\n"):
            return 0
        try:
            complete = isinstance(orjson.loads(tail), dict)
        except orjson.JSONDecodeError:
            complete = False
        if complete:
            stream.write(b"\n")
            return 0
        stream.truncate(start)
        return size - start


def _last_line_start(stream: io.BufferedRandom | io.BufferedReader, size: int) -> int:
    """Offset just after the last newline before the final byte (0 when there is none)."""
    position = size - 1  # the final byte may itself be the newline that ends the last line
    chunk = 1 << 16
    while position > 0:
        begin = max(0, position - chunk)
        stream.seek(begin)
        data = stream.read(position - begin)
        found = data.rfind(b"\n")
        if found >= 0:
            return begin + found + 1
        position = begin
    return 0


def repair_torn_csv(path: str, fmt: str, delimiter: str | None) -> int:
    """Drop a last CSV row cut short by a crash; returns the bytes removed (0 if none).

    Torn means an unterminated quoted field at the end of the file, or a last row without its
    newline that has fewer or more fields than the header. A last row that lacks only the newline
    but is otherwise whole is kept and gets its newline.
    """
    size = os.path.getsize(path)
    if size == 0:
        return 0
    tail = _csv_tail(path, fmt, delimiter)
    if tail.parse_error:
        keep = tail.last_end
    elif tail.ends_with_newline:
        return 0
    elif tail.last_width == tail.header_width:
        with open(path, "ab") as stream:
            stream.write(b"\n")
        return 0
    else:
        keep = tail.last_start
    with open(path, "r+b") as stream:
        stream.truncate(keep)
    return size - keep


@dataclass
class _CsvTail:
    header_width: int = 0
    last_start: int = 0  # where the last parsed row (or the header) begins
    last_end: int = 0  # where it ends
    last_width: int = 0
    parse_error: bool = False
    ends_with_newline: bool = True


def _csv_tail(path: str, fmt: str, delimiter: str | None) -> _CsvTail:
    """Offsets of the last complete row of a CSV file, found in one streaming pass."""
    tail = _CsvTail()
    offset = 0
    with open(path, "rb") as stream:

        def counted() -> Iterator[str]:
            nonlocal offset
            for raw in stream:
                offset += len(raw)
                tail.ends_with_newline = raw.endswith(b"\n")
                yield raw.decode("utf-8", errors="replace")

        reader = csv.reader(counted(), delimiter=delimiter_for(fmt, delimiter), strict=True)
        try:
            for row in reader:
                tail.last_start, tail.last_end = tail.last_end, offset
                tail.last_width = len(row)
                if not tail.header_width:
                    tail.header_width = len(row)
        except csv.Error:
            tail.parse_error = True
    return tail


# Done IDs -----------------------------------------------------------------------------------


def done_ids(
    path: str, fmt: str, *, delimiter: str | None = None, table: str | None = None
) -> DoneIDs:
    """The IDs an existing output holds; an absent or empty output holds none."""
    done = DoneIDs()
    if fmt != "sqlite" and (not os.path.exists(path) or os.path.getsize(path) == 0):
        return done
    if fmt == "jsonl":
        _jsonl_ids(path, done)
    elif fmt in ("csv", "tsv"):
        _csv_ids(path, fmt, delimiter, done)
    elif fmt == "json":
        _json_ids(path, done)
    elif fmt == "sqlite":
        _sqlite_ids(path, table or "records", done)
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
            if isinstance(record, dict) and ID_KEY in record:
                done.add(record[ID_KEY], is_error_record(record))


def _csv_ids(path: str, fmt: str, delimiter: str | None, done: DoneIDs) -> None:
    with open(path, "rb") as stream:
        ends_whole = _ends_with_newline(stream)
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
        reader = csv.reader(text, delimiter=delimiter_for(fmt, delimiter))
        header = next(reader, None)
        if not header or ID_KEY not in header:
            return
        id_at = header.index(ID_KEY)
        marks = [header.index(key) for key in ERROR_KEYS if key in header]
        is_error_row = len(marks) == len(ERROR_KEYS)
        previous: list[str] | None = None
        for row in reader:
            if previous is not None:
                _csv_row(previous, id_at, marks, is_error_row, done)
            previous = row
        if previous is not None and ends_whole:  # a last row cut short is not done
            _csv_row(previous, id_at, marks, is_error_row, done)


def _csv_row(
    row: list[str], id_at: int, marks: list[int], is_error_row: bool, done: DoneIDs
) -> None:
    if len(row) > id_at and row[id_at] != "":
        failed = is_error_row and all(index < len(row) and row[index] for index in marks)
        done.add(row[id_at], failed)


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
        try:
            document = orjson.loads(stream.read())
        except orjson.JSONDecodeError:
            raise TargetError(
                f"{path}: the existing output is not valid JSON",
                "fix or move it, or write to a new file",
            ) from None
    for record in document if isinstance(document, list) else [document]:
        if isinstance(record, dict) and ID_KEY in record:
            done.add(record[ID_KEY], is_error_record(record))


def _sqlite_ids(path: str, table: str, done: DoneIDs) -> None:
    if not os.path.exists(path):
        return
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            columns = {
                row[1] for row in connection.execute(f"PRAGMA table_info({quote_name(table)})")
            }
            if ID_KEY not in columns:
                return
            has_errors = all(key in columns for key in ERROR_KEYS)
            error_sql = (
                (f"{quote_name('error_type')} IS NOT NULL AND {quote_name('item')} IS NOT NULL")
                if has_errors
                else "0"
            )
            rows = connection.execute(
                f"SELECT {quote_name(ID_KEY)}, {error_sql} FROM {quote_name(table)}"
            )
            for record_id, failed in rows:
                done.add(record_id, bool(failed))
        finally:
            connection.close()
    except sqlite3.DatabaseError as error:
        raise TargetError(f"{path}: not a SQLite database ({error})") from None
