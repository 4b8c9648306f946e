"""Which IDs an existing output already holds.

This module is the only owner of the rule: an ID whose record in the output is a success is done;
an ID that only has an error record is to be tried again, and its newer record replaces the error.
"""

from __future__ import annotations

import csv
import io
import os
import sqlite3
from dataclasses import dataclass, field

import orjson

from agents.contract.error_record import ERROR_KEYS, is_error_record
from agents.contract.ids import ID_KEY, canonical_id
from agents.errors import InvalidID, TargetError
from agents.formats.csv import delimiter_for
from agents.formats.sqlite import quote_name


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
