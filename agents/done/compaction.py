"""Compaction: an output rewritten with one record per ID, byte for byte otherwise.

Which record stays is :mod:`agents.done.rules`' decision. The rewrite goes to a temporary file
beside the output, fsynced with its folder, then renamed over it, so a crash or a full disk at
any moment leaves either the old file or the new one, never a truncated one.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from typing import BinaryIO

import orjson

from agents.contract.error_record import ERROR_KEYS, is_error, is_error_record
from agents.contract.ids import ID_KEY, canonical_id
from agents.done import durable
from agents.done.rules import Standing
from agents.errors import InvalidID

#: A record's raw bytes with its canonical ID (None for a header, or a record without an ID)
#: and whether it is an error record.
Unit = tuple[str | None, bool, bytes]


def record_key(value: object) -> str | None:
    try:
        return canonical_id(value)
    except InvalidID:
        return None


def jsonl_units(stream: BinaryIO) -> Iterator[Unit]:
    for line in stream:
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            yield None, False, line
            continue
        if not isinstance(record, dict):
            yield None, False, line
            continue
        yield record_key(record.get(ID_KEY)), is_error_record(record), line


def csv_units(stream: BinaryIO, delimiter: str) -> Iterator[Unit]:
    """Rows with the exact bytes they span (a quoted newline makes a row span lines)."""
    consumed: list[bytes] = []

    def lines() -> Iterator[str]:
        for number, raw in enumerate(stream):
            consumed.append(raw)
            text = raw.decode("utf-8", errors="surrogateescape")
            yield text.removeprefix("\ufeff") if number == 0 else text  # the BOM stays in raw

    reader = csv.reader(lines(), delimiter=delimiter)
    places: list[int | None] = []
    for number, row in enumerate(reader):
        raw = b"".join(consumed)
        consumed.clear()
        if number == 0:
            places = [row.index(key) if key in row else None for key in (ID_KEY, *ERROR_KEYS)]
            yield None, False, raw
            continue
        record_id, error, error_type = (
            row[at] if at is not None and at < len(row) else None for at in places
        )
        key = record_key(record_id) if record_id else None
        yield key, is_error(error, error_type), raw
    if consumed:
        yield None, False, b"".join(consumed)


def one_per_id(
    units: Callable[[], Iterator[Unit]], keys: set[str], last_wins: set[str]
) -> Iterator[bytes]:
    """The raw units, keeping for each ID of ``keys`` only the record that stands (two passes)."""
    standing = Standing(keys, last_wins)
    for position, (key, failed, _) in enumerate(units()):
        standing.see(key, position, failed)
    for position, (key, _, raw) in enumerate(units()):
        if standing.stands(key, position):
            yield raw


def compact_file(
    path: str, fmt: str, delimiter: str, keys: set[str], last_wins: set[str] | None = None
) -> None:
    """Rewrite ``path`` (JSONL, CSV or TSV) atomically with one record for each ID of ``keys``
    (the last one for those of ``last_wins``, see :mod:`agents.done.rules`)."""

    def units() -> Iterator[Unit]:
        with open(path, "rb") as stream:
            if fmt == "jsonl":
                yield from jsonl_units(stream)
            else:
                yield from csv_units(stream, delimiter)

    def fill(stream: BinaryIO) -> None:
        for raw in one_per_id(units, keys, last_wins or set()):
            stream.write(raw)

    durable.replace_whole(path, fill)
