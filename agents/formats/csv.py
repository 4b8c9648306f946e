"""CSV and TSV: header row as keys, quoted fields with delimiters and newlines, ragged rows named.

Writing: columns are the union of the records' keys in first-seen order (or --columns). A key
that first appears after the header was written rewrites the file once with the wider header, so
the output is a valid table at every moment. Nulls are empty cells, booleans ``true``/``false``,
objects and arrays JSON text; CSV keeps no types, so reading it back gives strings.
"""

from __future__ import annotations

import codecs
import csv
import io
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from itertools import chain, count, islice, repeat
from operator import add, itemgetter
from typing import TYPE_CHECKING, Any, BinaryIO

import orjson

from agents.contract.ids import ID_KEY, Record, canonical_id, id_problem
from agents.errors import DataError, TargetError
from agents.formats._io import Source, csv_lines, utf8_text
from agents.formats._options import BadRowHandler, Positioned, ReadOptions

if TYPE_CHECKING:
    from _csv import _QuotingType

# A 10 MB field is legitimate data; the csv module's default limit is 128 KiB.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))

DELIMITERS = {"csv": ",", "tsv": "\t"}


def delimiter_for(fmt: str, explicit: str | None) -> str:
    if explicit is None:
        return DELIMITERS[fmt]
    if explicit in ("\\t", "tab"):
        return "\t"
    if len(explicit) != 1:
        from agents.errors import UsageError

        raise UsageError(f"--delimiter must be one character, not {explicit!r}")
    return explicit


def header_names(row: list[str]) -> list[str]:
    """Column names from a header row: a blank is named columnN (N its position), a repeat gets
    _2, _3… A generated name never takes a name the header itself has, wherever it stands:
    ``a,a,a_2`` gives ``a, a_3, a_2``."""
    given = set(row)
    names: list[str] = []
    used: set[str] = set()
    for index, raw in enumerate(row, 1):
        name = raw if raw != "" else f"column{index}"
        candidate, suffix = name, 2
        while candidate in used or (candidate != raw and candidate in given):
            candidate, suffix = f"{name}_{suffix}", suffix + 1
        used.add(candidate)
        names.append(candidate)
    return names


#: Rows parsed per batch: a batch whose rows all have the header's width becomes records in
#: C-level loops (map, zip, dict); only a batch with a problem is gone through row by row.
READ_BATCH = 1024


def read(source: Source, fmt: str, options: ReadOptions, bad: BadRowHandler) -> Positioned:
    reader = csv.reader(
        csv_lines(source, options.encoding),
        delimiter=delimiter_for(fmt, options.delimiter),
        strict=True,
    )
    state = _ReadState(source.name, bad, list(options.columns) if options.columns else None)
    if state.header is None and not options.no_header:
        first = state.first_row(reader)
        if first is None:
            return
        state.header = header_names(first)
    while True:
        start = reader.line_num
        rows: list[list[str]] = []
        failure: csv.Error | DataError | None = None
        try:
            rows.extend(islice(reader, READ_BATCH))  # keeps the rows taken before a failure
        except (csv.Error, DataError) as error:
            failure = error
        if rows:
            yield from state.records(rows, start)
        if isinstance(failure, DataError):  # undecodable bytes: no row can be trusted after
            raise failure
        if failure is not None:
            state.malformed(failure, start + sum(map(_lines_spanned, rows)), reader.line_num)
            if "unexpected end of data" in str(failure):
                return
            continue
        if not rows:
            return


def _lines_spanned(row: list[str]) -> int:
    """Physical lines a parsed row took: its own line end plus those inside quoted fields."""
    inside = sum(f.count("\n") + f.count("\r") - f.count("\r\n") for f in row)
    return 1 + inside


class _ReadState:
    """What reading a CSV file keeps between batches: header, row count, error reporting."""

    def __init__(self, name: str, bad: BadRowHandler, header: list[str] | None) -> None:
        self.name = name
        self.bad = bad
        self.header = header
        self.number = 0

    def first_row(self, reader: Iterator[list[str]]) -> list[str] | None:
        """The first non-blank row (the header)."""
        try:
            return next((row for row in reader if row), None)
        except csv.Error as error:
            self.malformed(error, 0, 0)
            return None

    def records(self, rows: list[list[str]], start: int) -> Iterator[Record]:
        if self.header is None:  # --no-header: the first row's width names the columns
            width = len(next((row for row in rows if row), []))
            self.header = [f"column{index}" for index in range(1, width + 1)]
        if set(map(len, rows)) == {len(self.header)} and not self._empty_ids(rows):
            first = self.number + 1
            self.number += len(rows)
            keys = [ID_KEY, *self.header]
            values = map(add, zip(count(first)), map(tuple, rows))
            yield from map(dict, map(zip, repeat(keys), values))
            return
        line = start
        for row in rows:
            first_line = line + 1
            line += _lines_spanned(row)
            if not row:  # a blank line
                continue
            self.number += 1
            if len(row) == len(self.header):
                record: Record = {ID_KEY: self.number}
                record.update(zip(self.header, row, strict=True))
                if problem := id_problem(record):
                    self.bad(DataError(f"{self.name}:{first_line}", problem))
                    continue
                yield record
            else:
                reason = (
                    f"row {self.number} has {len(row)} fields but the header has {len(self.header)}"
                )
                self.bad(DataError(f"{self.name}:{first_line}", reason))

    def _empty_ids(self, rows: list[list[str]]) -> bool:
        """Whether the file's own _id column has an empty cell in ``rows``."""
        assert self.header is not None
        if ID_KEY not in self.header:
            return False
        at = self.header.index(ID_KEY)
        return "" in map(itemgetter(at), rows)

    def malformed(self, error: csv.Error, row_start: int, current: int) -> None:
        message = str(error)
        if "unexpected end of data" in message:
            reason = 'unterminated quoted field (a " is never closed)'
            self.bad(DataError(f"{self.name}:{row_start + 1}", reason))
        else:
            self.bad(DataError(f"{self.name}:{current}", f"malformed CSV: {message}"))


# Writing ------------------------------------------------------------------------------------

_SPECIAL = frozenset((dict, list, bool))


def cell(value: Any) -> Any:
    """A JSON value as a CSV cell: objects and arrays as JSON, booleans as true/false."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return value


#: Replaces a live file whole: called with a function that copies the old content into the new
#: file, it returns the stream to go on appending to (see agents.done.targets).
Replace = Callable[[Callable[[BinaryIO, BinaryIO], None]], BinaryIO]


class Writer:
    """Rows into a seekable binary file that may be rewritten when new columns appear.

    Rows are rendered in batches. Python's csv module quotes a field holding a newline but not
    one holding a lone carriage return (its lineterminator is "\n" here), which would not read
    back; a batch containing "\r" is therefore re-rendered with such rows fully quoted.
    """

    BATCH = 512

    def __init__(
        self,
        stream: BinaryIO,
        fmt: str,
        delimiter: str | None,
        columns: list[str] | None,
        existing: list[str] | None = None,
        replace: Replace | None = None,
        lineterminator: str = "\n",
        bom: bool = False,
    ) -> None:
        self.stream = stream
        self.replace = replace
        self.lineterminator = lineterminator  # an existing file's own, when appending to it
        self.bom = bom  # the existing file starts with a UTF-8 byte-order mark
        self.delimiter = delimiter_for(fmt, delimiter)
        self.fixed = columns is not None
        self.columns: list[str] = list(columns or existing or [])
        self.index = set(self.columns)
        self.header_written = existing is not None
        self.pending: list[list[Any]] = []

    def write(self, record: Record) -> None:
        self.write_many((record,))

    def write_many(self, records: Iterable[Record]) -> None:
        """Render records into the pending batch.

        The common case, records whose keys are all known columns, is handled a batch at a time
        by C-level loops (itemgetter, map); anything else goes record by record.
        """
        batch = records if isinstance(records, list | tuple) else list(records)
        rows = self._known_rows(batch)
        if rows is None:
            for record in batch:
                self._write_one(record)
        else:
            if not _SPECIAL.isdisjoint(map(type, chain.from_iterable(rows))):
                rows = [[cell(value) for value in row] for row in rows]
            rows = self._canonical_ids(rows)
            if not self.header_written:
                self.pending.append(list(self.columns))
                self.header_written = True
            self.pending.extend(rows)
        if len(self.pending) >= self.BATCH:
            self._drain()

    def _canonical_ids(self, rows: list[Any]) -> list[Any]:
        """The ID column in its canonical form: a float ID such as 7.0 is the ID 7, and a CSV
        cell keeps no type to say so."""
        if ID_KEY not in self.index:
            return rows
        at = self.columns.index(ID_KEY)
        if float not in set(map(type, map(itemgetter(at), rows))):
            return rows
        fixed = []
        for row in rows:
            row = list(row)
            if isinstance(row[at], float):
                row[at] = canonical_id(row[at])
            fixed.append(row)
        return fixed

    def _known_rows(self, batch: list[Record] | tuple[Record, ...]) -> list[Any] | None:
        """The batch's rows when every record has exactly the known columns (else None).

        Every column present (itemgetter raises otherwise) and as many keys as columns means
        the keys are the columns; with --columns, other keys are simply left out.
        """
        if not self.columns:
            return None
        try:
            rows: list[Any] = list(map(self._getter(), batch))
        except KeyError:
            return None
        if not self.fixed and set(map(len, batch)) != {len(self.columns)}:
            return None
        return rows

    def _getter(self) -> Callable[[Record], tuple[Any, ...]]:
        if len(self.columns) == 1:
            only = self.columns[0]
            return lambda record: (record[only],)
        return itemgetter(*self.columns)

    def _write_one(self, record: Record) -> None:
        if not self.fixed and not self.index.issuperset(record):
            self.add_columns([key for key in record if key not in self.index])
        if not self.header_written:
            self.pending.append(list(self.columns))
            self.header_written = True
        values = list(map(record.get, self.columns))
        if not _SPECIAL.isdisjoint(map(type, values)):
            values = [cell(value) for value in values]
        self.pending.extend(self._canonical_ids([values]))

    def flush(self) -> None:
        self._drain()
        self.stream.flush()

    def close(self) -> None:
        if not self.header_written and self.columns:
            self.pending.append(list(self.columns))
            self.header_written = True
        self.flush()

    def _render(self, rows: list[list[Any]], quoting: _QuotingType = csv.QUOTE_MINIMAL) -> str:
        buffer = io.StringIO()
        csv.writer(
            buffer, delimiter=self.delimiter, lineterminator=self.lineterminator, quoting=quoting
        ).writerows(rows)
        return buffer.getvalue()

    def _drain(self) -> None:
        if not self.pending:
            return
        self._write_rows(self.pending, self.stream)
        self.pending.clear()

    def _write_rows(self, rows: list[list[Any]], stream: BinaryIO) -> None:
        text = self._render(rows)
        if self._lone_cr(text):
            text = "".join(
                self._render([row], csv.QUOTE_ALL) if self._lone_cr(line) else line
                for row in rows
                for line in [self._render([row])]
            )
        stream.write(text.encode("utf-8", errors="surrogatepass"))

    def write_rendered(self, rows: BinaryIO) -> None:
        """Rows already rendered for the current columns (see agents.formats.csv_parallel)."""
        if not self.header_written and self.columns:  # no columns yet: no record came
            self.pending.append(list(self.columns))
            self.header_written = True
        self._drain()
        shutil.copyfileobj(rows, self.stream, 1 << 20)

    def add_columns(self, new: list[str]) -> None:
        """Widen the header; the columns change only once the rows written so far follow."""
        self._drain()
        if self.header_written:
            self._rewrite_with_header([*self.columns, *new])
        self.columns.extend(new)
        self.index.update(new)

    def _rewrite_with_header(self, columns: list[str]) -> None:
        """Rewrite everything written so far under the wider header, rows padded with blanks.

        A live file (an --append target) is never truncated: ``replace`` writes the widened
        copy beside it and renames it into place. A stream nobody else sees yet (a temporary
        file, a spool) is rewritten in place through a temporary spool; memory stays flat.
        """
        self.stream.flush()

        def copy(old: BinaryIO, new: BinaryIO) -> None:
            self._copy_widened(old, new, columns)

        if self.replace is not None:
            self.stream = self.replace(copy)
            return
        with tempfile.TemporaryFile() as spool:
            self.stream.seek(0)
            shutil.copyfileobj(self.stream, spool)
            spool.seek(0)
            self.stream.seek(0)
            self.stream.truncate()
            copy(spool, self.stream)
            self.stream.flush()

    def _lone_cr(self, text: str) -> bool:
        """A carriage return that is not part of the line terminator (see the class)."""
        if self.lineterminator == "\r\n":
            text = text.replace("\r\n", "")
        return "\r" in text

    def _copy_widened(self, old: BinaryIO, new: BinaryIO, columns: list[str]) -> None:
        """The rows of ``old`` under the wider header ``columns``, into ``new``."""
        if self.bom:
            new.write(codecs.BOM_UTF8)
        text = io.TextIOWrapper(old, encoding="utf-8-sig", newline="")
        try:
            rows = csv.reader(text, delimiter=self.delimiter)
            next(rows, None)
            batch: list[list[Any]] = [list(columns)]
            width = len(columns)
            for row in rows:
                batch.append(row + [""] * (width - len(row)))
                if len(batch) >= self.BATCH:
                    self._write_rows(batch, new)
                    batch.clear()
            self._write_rows(batch, new)
        finally:
            text.detach()


def read_header(path: str, fmt: str, delimiter: str | None) -> list[str] | None:
    """The header of an existing CSV target, or None when it is empty."""
    with open(path, "rb") as stream:
        text = utf8_text(stream)
        try:
            row = next(csv.reader(text, delimiter=delimiter_for(fmt, delimiter)), None)
        except (csv.Error, UnicodeDecodeError) as error:
            raise TargetError(f"{path}: not a readable {fmt.upper()} file: {error}") from None
        return row
