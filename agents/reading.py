"""agents-read as a library: records from any source, with IDs, shards and limits applied."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from agents.errors import DataError
from agents.formats import Location
from agents.formats._io import Source, open_source
from agents.formats._options import BadRowHandler, Positioned, ReadOptions
from agents.records import ID_KEY, InvalidID, Record, canonical_id, shard_of


@dataclass(frozen=True)
class Selection:
    """Which records to keep and how to name them."""

    id_field: str | None = None
    limit: int | None = None
    shard: tuple[int, int] | None = None  # (K, N), K from 1 to N


def positioned(
    location: Location, options: ReadOptions, stdin: BinaryIO, bad: BadRowHandler
) -> tuple[Source | None, Positioned]:
    """The format reader for ``location``, yielding (default ID, record) pairs."""
    if location.format == "sqlite":
        from agents.formats import sqlite

        return None, sqlite.read(location.path, options)
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


def with_ids(pairs: Positioned, selection: Selection, name: str) -> Iterator[Record]:
    """Records with their ID first: from --id, an existing ID key, or the row/line/key position."""
    field = selection.id_field
    for position, record in pairs:
        if field is not None:
            if field not in record:
                raise DataError(f"{name}: record {position}", f"has no field {field!r} for --id")
            record_id = record[field]
        elif ID_KEY in record:
            record_id = record[ID_KEY]
        else:
            record_id = position
        out = {ID_KEY: record_id}
        out.update(record)
        out[ID_KEY] = record_id
        yield out


def select(records: Iterator[Record], selection: Selection, name: str) -> Iterator[Record]:
    """Apply --shard and --limit, checking that every ID can be compared."""
    remaining = selection.limit
    if remaining is not None and remaining <= 0:
        return
    shard = selection.shard
    for record in records:
        if shard is not None:
            try:
                key = canonical_id(record[ID_KEY])
            except InvalidID as error:
                raise DataError(f"{name}", f"record with {ID_KEY} {error}") from None
            if shard_of(key, shard[1]) != shard[0]:
                continue
        yield record
        if remaining is not None:
            remaining -= 1
            if remaining == 0:
                return


def read_records(
    location: Location,
    options: ReadOptions,
    selection: Selection,
    stdin: BinaryIO,
    bad: BadRowHandler,
) -> Iterator[Record]:
    """Every selected record of ``location`` as it streams in."""
    source, pairs = positioned(location, options, stdin, bad)
    name = source.name if source else location.path
    try:
        yield from select(with_ids(pairs, selection, name), selection, name)
    finally:
        if source is not None:
            source.close()
