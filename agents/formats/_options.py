"""Options shared by the format readers and writers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from agents.contract.ids import Record
from agents.errors import DataError

#: Called with each bad row or line: raises it, or (with --skip-bad) reports it and returns.
BadRowHandler = Callable[[DataError], None]

#: What a format reader yields: records whose first key is the ID key, holding the default ID
#: (row or line number, primary key), unless the source itself has an ID field, which wins.
Positioned = Iterator[Record]


@dataclass
class ReadOptions:
    encoding: str = "utf-8"
    delimiter: str | None = None
    no_header: bool = False
    columns: list[str] | None = None
    key: str | None = None
    query: str | None = None
    table: str | None = None


@dataclass
class WriteOptions:
    columns: list[str] | None = None
    delimiter: str | None = None
    field: str = "content"
    table: str | None = None
    append: bool = False
    on_duplicate: str = "keep-first"  # an ID twice in one input (see agents.done.rules)


def raise_bad(error: DataError) -> None:
    raise error
