"""JSON Lines: one object per line, blank lines skipped; written compact, one per line."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import BinaryIO

import orjson

from agents.contract.codec import encode, loads, may_hold_big_integers
from agents.contract.ids import ID_KEY, Record, all_ids_valid, id_problem
from agents.errors import DataError
from agents.formats._encodings import check_start, json_problem, normalise_encoding
from agents.formats._io import LineSplitter, Source, decoded_chunks
from agents.formats._options import BadRowHandler, Positioned, ReadOptions


def type_name(value: object) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def read(source: Source, options: ReadOptions, bad: BadRowHandler) -> Positioned:
    for number, raw in enumerate(_lines(source, options.encoding), 1):
        value = parse_object(raw, f"{source.name}:{number}", bad, encoding_option=True)
        if value is None:
            continue
        record = {ID_KEY: number}
        record.update(value)
        yield record


def _lines(source: Source, encoding: str) -> Iterator[bytes | str]:
    """Raw bytes for UTF-8 (orjson validates them itself), decoded text otherwise. Lines end
    at newlines only: a JSON string may hold U+2028 or a form feed as they are."""
    if normalise_encoding(encoding) in ("utf-8", "utf-8-sig"):
        raw = iter(source.stream)
        first = next(raw, None)
        if first is None:
            return
        yield first[check_start(source.name, first, encoding).skip :]
        yield from raw
    else:
        for text in decoded_chunks(source, encoding):
            lines = text.split("\n")
            if not lines[-1]:  # the chunk ended with a newline
                lines.pop()
            yield from lines


class Writer:
    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream

    def write(self, record: Record) -> None:
        self.stream.write(encode(record))

    def write_many(self, records: Iterable[Record]) -> None:
        # Small joins: many of orjson's output buffers alive at once slow every call down.
        iterator = iter(records)
        while batch := list(islice(iterator, 64)):
            self.stream.write(b"".join(map(encode, batch)))

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


def batches(stream: BinaryIO, name: str, bad: BadRowHandler) -> Iterator[list[Record]]:
    """Objects from a JSON Lines stream, in batches of whatever has arrived.

    Each read takes the bytes already available (``read1``), so a fast producer yields large
    batches (cheap per record) and a slow one yields each record as soon as its line is whole,
    which keeps an appended output current. Bad lines go to ``bad`` with their line number.
    """
    number = 1
    for lines in whole_lines(stream):
        batch = parse_lines(lines, name, number, bad)
        number += len(lines)
        if batch:
            yield batch


def parse_lines(lines: list[bytes], name: str, first: int, bad: BadRowHandler) -> list[Record]:
    """The objects on ``lines`` (numbered from ``first``); blank lines skipped, bad ones to ``bad``.

    The whole list is parsed by C-level loops first; only a list with a problem is gone through
    line by line to name it.
    """
    try:
        batch = list(map(orjson.loads, lines))
        if (
            set(map(type, batch)) <= {dict}
            and all_ids_valid(batch)
            and not may_hold_big_integers(b"\n".join(lines))
        ):
            return batch
    except orjson.JSONDecodeError:
        pass
    checked: list[Record] = []
    for number, line in enumerate(lines, first):
        try:
            value = parse_object(line, f"{name}:{number}", bad)
        except DataError as error:  # ``bad`` stopped the batch: say what came before
            error.records_before = checked
            raise
        if value is not None:
            checked.append(value)
    return checked


def parse_object(
    line: bytes | str, where: str, bad: BadRowHandler, encoding_option: bool = False
) -> Record | None:
    """The object on one line; None for a blank line or a bad one (reported to ``bad``).

    ``encoding_option``: the reader has ``--encoding`` (agents-read), which a hint about bytes
    that are not UTF-8 may then name; JSON Lines on other commands' stdin are UTF-8.
    """
    if not line.strip():
        return None
    try:
        value = loads(line)
    except orjson.JSONDecodeError as error:
        why = json_problem(error, line, encoding_option)
        bad(DataError(where, why.reason, why.hint))
        return None
    if not isinstance(value, dict):
        bad(DataError(where, f"expected a JSON object, found {type_name(value)}"))
        return None
    if problem := id_problem(value):
        bad(DataError(where, problem))
        return None
    return value


def whole_lines(stream: BinaryIO, size: int = 1 << 16) -> Iterator[list[bytes]]:
    """Lists of complete lines (without their newlines) as they become available."""
    read = getattr(stream, "read1", stream.read)
    splitter = LineSplitter()
    while chunk := read(size):
        if lines := splitter.feed(chunk):
            yield lines
    if rest := splitter.finish():
        yield rest
