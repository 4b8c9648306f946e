"""agents-read as a library: records from any source, with IDs, shards and limits applied."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

from agents.contract.ids import ID_KEY, Record, canonical_id, shard_of
from agents.errors import DataError, InvalidID
from agents.formats import Location
from agents.formats._io import Source, open_source
from agents.formats._options import BadRowHandler, Positioned, ReadOptions


@dataclass(frozen=True)
class Selection:
    """Which records to keep and how to name them."""

    id_field: str | None = None
    limit: int | None = None
    shard: tuple[int, int] | None = None  # (K, N), K from 1 to N


def format_reader(
    location: Location, options: ReadOptions, stdin: BinaryIO, bad: BadRowHandler
) -> tuple[Source | None, Positioned]:
    """The reader for ``location``'s format, yielding records that start with a default ID."""
    if location.format == "sqlite":
        from agents.formats import sqlite

        return None, sqlite.read(location.path, options, bad)
    source = open_source(location.path, stdin)
    if location.format in ("csv", "tsv"):
        from agents.formats import csv

        return source, csv.read(source, location.format, options, bad)
    if location.format == "jsonl":
        from agents.formats import jsonl

        return source, jsonl.read(source, options, bad)
    if location.format == "json":
        from agents.formats import json

        return source, json.read(source, options, bad)
    from agents.formats import text

    return source, text.read(source, options, bad)


def _id_from_field(records: Positioned, field: str, name: str) -> Iterator[Record]:
    """--id FIELD: the field's value replaces the default ID (which names a record lacking it)."""
    for record in records:
        if field not in record:
            position = record[ID_KEY]
            raise DataError(f"{name}: record {position}", f"has no field {field!r} for --id")
        value = record[field]
        try:
            canonical_id(value)
        except InvalidID as error:
            position = record[ID_KEY]
            raise DataError(f"{name}: record {position}", f"--id {field}: {error}") from None
        record[ID_KEY] = value
        yield record


def _shard(records: Iterator[Record], shard: tuple[int, int], name: str) -> Iterator[Record]:
    wanted, count = shard
    for record in records:
        try:
            key = canonical_id(record[ID_KEY])
        except InvalidID as error:
            raise DataError(name, f"record with {ID_KEY} {error}") from None
        if shard_of(key, count) == wanted:
            yield record


def _limit(records: Iterator[Record], limit: int) -> Iterator[Record]:
    if limit <= 0:
        return
    for count, record in enumerate(records, 1):
        yield record
        if count == limit:
            return


@contextmanager
def open_records(
    location: Location,
    options: ReadOptions,
    selection: Selection,
    stdin: BinaryIO,
    bad: BadRowHandler,
) -> Iterator[Iterator[Record]]:
    """Every selected record of ``location`` as it streams in, its ID first.

    A context manager, so that the input is closed however the caller stops reading.
    """
    source, records = format_reader(location, options, stdin, bad)
    name = source.name if source else location.path
    try:
        if selection.id_field is not None:
            records = _id_from_field(records, selection.id_field, name)
        if selection.shard is not None:
            records = _shard(records, selection.shard, name)
        if selection.limit is not None:
            records = _limit(records, selection.limit)
        yield records
    finally:
        if source is not None:
            source.close()


def read_records(
    location: Location,
    options: ReadOptions,
    selection: Selection,
    stdin: BinaryIO,
    bad: BadRowHandler,
) -> Iterator[Record]:
    """The records of :func:`open_records` as one generator, for callers that read them all."""
    with open_records(location, options, selection, stdin, bad) as records:
        yield from records
