"""The repair of a torn last line or row, left in a durable output by a crash."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass

import orjson

from agents.formats.csv import delimiter_for


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
