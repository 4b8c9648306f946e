"""Dropping records that a newer record for the same ID replaced, byte for byte otherwise.

In append mode a success (or a newer error) may arrive for an ID whose error record is already in
the output. Both stay until the input ends; then the output is rewritten atomically keeping only
the last record of each such ID. Every other line or row is copied as the exact bytes it was.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from typing import BinaryIO

import orjson

from agents.contract.ids import ID_KEY, canonical_id
from agents.errors import InvalidID
from agents.formats._io import AtomicFile
from agents.formats.csv import delimiter_for

#: A record's raw bytes with its canonical ID (None for a header, or a record without an ID).
Unit = tuple[str | None, bytes]


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
            yield None, line
            continue
        yield (record_key(record.get(ID_KEY)) if isinstance(record, dict) else None), line


def csv_units(stream: BinaryIO, fmt: str, delimiter: str | None) -> Iterator[Unit]:
    """Rows with the exact bytes they span (a quoted newline makes a row span lines)."""
    consumed: list[bytes] = []

    def lines() -> Iterator[str]:
        for raw in stream:
            consumed.append(raw)
            yield raw.decode("utf-8", errors="surrogateescape")

    reader = csv.reader(lines(), delimiter=delimiter_for(fmt, delimiter))
    id_at: int | None = None
    for number, row in enumerate(reader):
        raw = b"".join(consumed)
        consumed.clear()
        if number == 0:
            id_at = row.index(ID_KEY) if ID_KEY in row else None
            yield None, raw
        else:
            key = record_key(row[id_at]) if id_at is not None and id_at < len(row) else None
            yield key, raw
    if consumed:
        yield None, b"".join(consumed)


def keep_last(units: Callable[[], Iterator[Unit]], replaced: set[str]) -> Iterator[bytes]:
    """The raw units, without all but the last one of each replaced ID (two passes)."""
    last: dict[str, int] = {}
    for position, (key, _) in enumerate(units()):
        if key in replaced:
            last[key] = position
    for position, (key, raw) in enumerate(units()):
        if key is not None and key in replaced and last[key] != position:
            continue
        yield raw


def compact_file(path: str, fmt: str, delimiter: str | None, replaced: set[str]) -> None:
    """Rewrite ``path`` (JSONL, CSV or TSV) atomically without the replaced records."""

    def units() -> Iterator[Unit]:
        with open(path, "rb") as stream:
            if fmt == "jsonl":
                yield from jsonl_units(stream)
            else:
                yield from csv_units(stream, fmt, delimiter)

    file = AtomicFile(path)
    try:
        for raw in keep_last(units, replaced):
            file.stream.write(raw)
        file.commit()
    except BaseException:
        file.abort()
        raise
