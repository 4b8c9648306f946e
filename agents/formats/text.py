"""Plain text: one record per line, ``{"line_number": N, "content": "..."}``; written back from a
single field (``--field``, default ``content``), one line per record."""

from __future__ import annotations

from collections.abc import Iterable
from typing import BinaryIO

import orjson

from agents.contract.ids import ID_KEY, Record
from agents.errors import DataError, UsageError
from agents.formats._io import Source, decoded_chunks
from agents.formats._options import BadRowHandler, Positioned, ReadOptions


def read(source: Source, options: ReadOptions, bad: BadRowHandler) -> Positioned:
    number = 0
    for text in decoded_chunks(source, options.encoding):
        lines = text.split("\n")
        if lines[-1] == "":  # the chunk ended with a newline
            lines.pop()
        for line in lines:
            number += 1
            content = line[:-1] if line.endswith("\r") else line
            yield {ID_KEY: number, "line_number": number, "content": content}


class Writer:
    def __init__(self, stream: BinaryIO, field: str) -> None:
        if not field:
            raise UsageError("text output needs --field NAME: the field written on each line")
        self.stream = stream
        self.field = field
        self.count = 0

    def write(self, record: Record) -> None:
        self.count += 1
        if self.field not in record:
            raise DataError(
                f"record {self.count}",
                f"has no field {self.field!r} to write as text",
                "name the field with --field NAME",
            )
        value = record[self.field]
        if value is None:
            text = b""
        elif isinstance(value, str):
            text = value.encode("utf-8")
        else:
            text = orjson.dumps(value)
        self.stream.write(text + b"\n")

    def write_many(self, records: Iterable[Record]) -> None:
        for record in records:
            self.write(record)

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()
