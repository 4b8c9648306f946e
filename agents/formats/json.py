"""JSON documents: a top-level array is one record per element, an object is one record.

The whole document is parsed at once; a single huge JSON array is the one input whose memory
grows with its size (use JSONL for streams). Written as one array, one record per line.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, BinaryIO

import orjson

from agents.contract.codec import loads
from agents.contract.ids import ID_KEY, Record, id_problem
from agents.errors import DataError
from agents.formats._encodings import check_start, json_problem, undecodable_after
from agents.formats._io import Source
from agents.formats._options import BadRowHandler, Positioned, ReadOptions
from agents.formats.jsonl import type_name


def parse_document(source: Source, encoding: str) -> Any:
    data = source.stream.read()
    start = check_start(source.name, data, encoding)
    data = data[start.skip :]
    if start.codec != "utf-8":
        try:
            data = data.decode(start.codec).encode("utf-8")
        except UnicodeDecodeError as error:
            before = data[: error.start].decode(start.codec)
            raise undecodable_after(source.name, before, error, start.codec, encoding) from None
    if not data.strip():
        return []
    try:
        return loads(data)
    except orjson.JSONDecodeError as error:
        problem = json_problem(error, data, option=True)
        line = problem.line or getattr(error, "lineno", None)
        where = f"{source.name}:{line}" if line else source.name
        raise DataError(where, problem.reason, problem.hint) from None


def select(document: Any, key: str | None, name: str) -> Any:
    """The value at a dotted --key path (``data.items``), naming the first missing step."""
    if not key:
        return document
    value = document
    for step in key.split("."):
        if isinstance(value, dict) and step in value:
            value = value[step]
        elif isinstance(value, list) and step.isdigit() and int(step) < len(value):
            value = value[int(step)]
        else:
            raise DataError(name, f"--key {key}: no {step!r} in the document")
    return value


def read(source: Source, options: ReadOptions, bad: BadRowHandler) -> Positioned:
    value = select(parse_document(source, options.encoding), options.key, source.name)
    if isinstance(value, dict):
        if problem := id_problem(value):
            raise DataError(source.name, problem)
        yield _with_position(1, value)
        return
    if not isinstance(value, list):
        raise DataError(
            source.name,
            f"expected an array or an object, found {type_name(value)}",
            "use --key to pick the array that holds the records",
        )
    for number, element in enumerate(value, 1):
        if not isinstance(element, dict):
            bad(
                DataError(
                    f"{source.name}: element {number}",
                    f"expected a JSON object, found {type_name(element)}",
                )
            )
            continue
        if problem := id_problem(element):
            bad(DataError(f"{source.name}: element {number}", problem))
            continue
        yield _with_position(number, element)


def _with_position(number: int, element: Record) -> Record:
    record: Record = {ID_KEY: number}
    record.update(element)
    return record


class Writer:
    """One JSON array, a record per line, written as records arrive."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.count = 0

    def write(self, record: Record) -> None:
        self.stream.write(b",\n" if self.count else b"[\n")
        self.stream.write(orjson.dumps(record))
        self.count += 1

    def write_many(self, records: Iterable[Record]) -> None:
        for record in records:
            self.write(record)

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        self.stream.write(b"\n]\n" if self.count else b"[]\n")
        self.stream.flush()
