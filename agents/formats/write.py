"""agents-write's one-shot targets: standard output, or a file replaced whole at the end.

Records go to a temporary file beside the target, renamed into place when the input ends, so an
interrupted or failed run leaves the old target untouched. ``.gz`` targets are compressed at that
moment. The durable targets of ``--append`` build on these (:mod:`agents.done.targets`).
"""

from __future__ import annotations

import contextlib
import gzip
import itertools
import shutil
import tempfile
from collections.abc import Iterable
from typing import BinaryIO, Protocol

from agents.contract.ids import Record
from agents.errors import DataError
from agents.formats import Location
from agents.formats._io import AtomicFile, check_writable
from agents.formats._options import BadRowHandler, WriteOptions
from agents.formats.csv import Replace
from agents.formats.jsonl import batches, parse_lines


class FormatWriter(Protocol):
    def write(self, record: Record) -> None: ...
    def write_many(self, records: Iterable[Record]) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


def format_writer(
    fmt: str,
    stream: BinaryIO,
    options: WriteOptions,
    existing_columns: list[str] | None = None,
    replace: Replace | None = None,
    lineterminator: str = "\n",
    bom: bool = False,
) -> FormatWriter:
    """The writer of ``fmt`` on ``stream``; for CSV/TSV appended to, ``replace`` rewrites the
    live file whole, and ``lineterminator`` and ``bom`` follow the existing file."""
    if fmt in ("csv", "tsv"):
        from agents.formats import csv

        return csv.Writer(
            stream,
            fmt,
            options.delimiter,
            options.columns,
            existing_columns,
            replace,
            lineterminator,
            bom,
        )
    if fmt == "json":
        from agents.formats import json

        return json.Writer(stream)
    if fmt == "text":
        from agents.formats import text

        return text.Writer(stream, options.field)
    from agents.formats import jsonl

    return jsonl.Writer(stream)


class Target:
    """An opened output. ``write`` each record, then ``commit`` on success or ``abort``."""

    written = 0
    repaired_bytes = 0

    @property
    def skipped(self) -> int:
        """Records not written because the output already held their ID (appending only)."""
        return 0

    def write(self, record: Record) -> None:
        raise NotImplementedError

    def write_many(self, records: list[Record]) -> None:
        for record in records:
            self.write(record)

    def consume(self, stream: BinaryIO, name: str, bad: BadRowHandler) -> None:
        """Write every record of the JSON Lines ``stream``, batch by batch as they arrive; a bad
        line that stops the run stops it after the records before it."""
        try:
            for batch in batches(stream, name, bad):
                self.write_many(batch)
        except DataError as error:
            if error.records_before:
                self.write_many(error.records_before)
            raise

    def commit(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError


class _FormatTarget(Target):
    """A target that hands every record to its format's writer."""

    writer: FormatWriter

    def write(self, record: Record) -> None:
        self.writer.write(record)
        self.written += 1

    def write_many(self, records: list[Record]) -> None:
        self.writer.write_many(records)
        self.written += len(records)


class StreamTarget(_FormatTarget):
    """Standard output. CSV/TSV without --columns is spooled so a late new column loses nothing."""

    def __init__(self, fmt: str, options: WriteOptions, stdout: BinaryIO) -> None:
        self.stdout = stdout
        self.spool: BinaryIO | None = None
        stream = stdout
        if fmt in ("csv", "tsv") and options.columns is None:
            self.spool = tempfile.TemporaryFile()
            stream = self.spool
        self.writer = format_writer(fmt, stream, options)

    def commit(self) -> None:
        self.writer.close()
        if self.spool is not None:
            self.spool.seek(0)
            shutil.copyfileobj(self.spool, self.stdout)
            self.spool.close()
        self.stdout.flush()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.flush()
            self.stdout.flush()


class AtomicTarget(_FormatTarget):
    """A file replaced whole at commit; ``.gz`` targets are compressed from a plain spool."""

    def __init__(self, location: Location, options: WriteOptions) -> None:
        self.location = location
        check_writable(location.path)
        self.compress = location.path.endswith(".gz")
        self.file = AtomicFile(location.path)
        self.spool: BinaryIO | None = tempfile.TemporaryFile() if self.compress else None
        self.writer = format_writer(location.format, self.spool or self.file.stream, options)

    def consume(self, stream: BinaryIO, name: str, bad: BadRowHandler) -> None:
        """A large CSV or TSV input is rendered on every core (see agents.formats.csv_parallel)."""
        from agents.formats import csv as csv_format

        if not isinstance(self.writer, csv_format.Writer):
            super().consume(stream, name, bad)
            return
        from agents.formats.csv_parallel import chunks, write_parallel

        pieces = chunks(stream)
        first = next(pieces, b"")
        second = next(pieces, None)
        if second is None:  # the input fits in one chunk: not worth starting workers
            lines = first.split(b"\n")
            if lines[-1] == b"":
                lines.pop()
            self.write_many(parse_lines(lines, name, 1, bad))
            return
        self.written += write_parallel(
            itertools.chain([first, second], pieces), self.writer, self.location.format, name, bad
        )

    def commit(self) -> None:
        self.writer.close()
        if self.spool is not None:
            self.spool.seek(0)
            with gzip.GzipFile(fileobj=self.file.stream, mode="wb", mtime=0) as packed:
                shutil.copyfileobj(self.spool, packed)
            self.spool.close()
        self.file.commit()

    def abort(self) -> None:
        if self.spool is not None:
            self.spool.close()
        self.file.abort()
