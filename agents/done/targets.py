"""agents-write's targets: the choice of one, and the durable ones that --append grows.

* one-shot (the default): see :mod:`agents.formats.write`.
* append (``--append``): records are added to the existing output as they arrive, flushed at
  once and fsynced every second; a torn last line left by a crash is repaired first; which
  record stands for an ID is :mod:`agents.done.rules`' decision, and the records it supersedes
  are compacted away when the input ends. Every whole-file rewrite (CSV/TSV columns widened,
  compaction, a JSON file put in its growable layout) goes through
  :func:`agents.done.durable.replace_whole`: the live file is never truncated.

SQLite targets are always upserts keyed by the ID, in batched transactions.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import time
from collections.abc import Callable, Iterable
from typing import BinaryIO

import orjson

from agents.contract.error_record import is_error_record
from agents.contract.ids import ID_KEY, Record
from agents.done import durable
from agents.done.compaction import compact_file, record_key
from agents.done.ids import DoneIDs, Output, csv_header, done_ids, torn_json_records
from agents.done.lock import WriterLock
from agents.done.repair import repair_torn_csv, repair_torn_jsonl
from agents.done.rules import Ledger, Standing
from agents.done.sidecar import read_sidecar
from agents.errors import DataError, TargetError, UsageError
from agents.formats import Location, resolve
from agents.formats._io import check_writable
from agents.formats._options import WriteOptions
from agents.formats.csv import delimiter_for
from agents.formats.write import AtomicTarget, StreamTarget, Target, format_writer

#: How often an append-mode target is fsynced while records arrive.
FSYNC_SECONDS = 1.0


def output_of(location: Location, options: WriteOptions) -> Output:
    """The output as --resume must read it back."""
    return Output(
        location.path,
        location.format,
        options.table or location.table,
        options.delimiter if location.format in ("csv", "tsv") else None,
    )


def note_output(output: Output) -> None:
    """Tell a later ``--resume`` how this output is written, when its name does not say."""
    try:
        named = resolve(output.path, None).format
    except UsageError:
        named = None
    plain = named == output.format and output.table is None and output.delimiter is None
    sidecar = read_sidecar(output.path)
    if not plain or sidecar.output is not None:
        sidecar.record_output(
            {"format": output.format, "table": output.table, "delimiter": output.delimiter}
        )


class LedgerTarget(Target):
    """A target that knows the IDs it holds: it skips those done, and names duplicates."""

    ledger: Ledger

    @property
    def skipped(self) -> int:
        return self.ledger.skipped_done


class AppendTarget(LedgerTarget):
    """JSONL, CSV or TSV appended to in place, one flushed write per batch of records."""

    def __init__(self, location: Location, options: WriteOptions) -> None:
        path, fmt = location.path, location.format
        check_writable(path)
        self.output = output_of(location, options)
        self.delimiter = delimiter_for(fmt, options.delimiter) if fmt != "jsonl" else ""
        if os.path.exists(path):
            if fmt == "jsonl":
                self.repaired_bytes = repair_torn_jsonl(path)
            else:
                self.repaired_bytes = repair_torn_csv(path, fmt, options.delimiter)
        self.ledger = Ledger(done_ids(self.output), options.on_duplicate)
        existing: list[str] | None = None
        lineterminator, bom = "\n", False
        if fmt in ("csv", "tsv") and os.path.exists(path) and os.path.getsize(path):
            existing = csv_header(path, self.delimiter)
            lineterminator, bom = _csv_style(path)
        # Rows without an ID column cannot be told apart from new ones: records with IDs
        # appended to them would leave those rows with an empty, invalid ID.
        self.rows_without_ids = bool(
            existing and ID_KEY not in existing and self.ledger.done.records
        )
        self.stream = durable.DISK.open(path, "r+b" if os.path.exists(path) else "w+b")
        self.stream.seek(0, os.SEEK_END)
        self.writer = format_writer(
            fmt, self.stream, options, existing, self._replace, lineterminator, bom
        )
        self.last_sync = time.monotonic()
        note_output(self.output)

    def write(self, record: Record) -> None:
        self.write_many([record])

    def write_many(self, records: list[Record]) -> None:
        if self.rows_without_ids and any(ID_KEY in record for record in records):
            path = self.output.path
            raise TargetError(
                f"{path}: its rows have no {ID_KEY} column, so records with IDs cannot be "
                "appended to it",
                f"append to a new file, or give its rows IDs first: "
                f"agents-read {path} | agents-write NEW.csv",
            )
        admitted: list[Record] = []
        stopped: DataError | None = None
        try:
            for record in records:
                if self.ledger.admit(record):
                    admitted.append(record)
        except DataError as error:  # --on-duplicate error: what came before it is kept
            stopped = error
        if admitted:
            self.writer.write_many(admitted)
            self.writer.flush()
            self.written += len(admitted)
            if time.monotonic() - self.last_sync >= FSYNC_SECONDS:
                durable.DISK.fsync(self.stream)
                self.last_sync = time.monotonic()
        if stopped is not None:
            raise stopped

    def _replace(self, copy: Callable[[BinaryIO, BinaryIO], None]) -> BinaryIO:
        """Rewrite the live file whole (new CSV columns), then go on appending to the new one."""
        durable.DISK.fsync(self.stream)
        path = self.output.path

        def fill(new: BinaryIO) -> None:
            with open(path, "rb") as old:
                copy(old, new)

        durable.replace_whole(path, fill)
        self.stream.close()
        self.stream = durable.DISK.open(path, "r+b")
        self.stream.seek(0, os.SEEK_END)
        return self.stream

    def commit(self) -> None:
        self.writer.close()
        durable.DISK.fsync(self.stream)
        self.stream.close()
        if self.ledger.superseded:
            compact_file(
                self.output.path,
                self.output.format,
                self.delimiter,
                self.ledger.superseded,
                self.ledger.last_wins,
            )

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()
            durable.DISK.fsync(self.stream)
        self.stream.close()


def _csv_style(path: str) -> tuple[str, bool]:
    """An existing CSV's line terminator (from its header line) and whether it has a BOM, so
    that what is appended matches it."""
    with open(path, "rb") as stream:
        head = stream.read(1 << 16)
    bom = head.startswith(codecs.BOM_UTF8)
    end = head.find(b"\n")
    crlf = end > 0 and head[end - 1 : end] == b"\r"
    return ("\r\n" if crlf else "\n"), bom


class JsonAppendTarget(LedgerTarget):
    """A JSON array grown in place, so that it is durable as records arrive like the others.

    The file is kept as ``[``, one record per line, ``]``; each new record overwrites the
    closing bracket and writes it again after itself, in one write. A crash can only tear the
    end, which the next run repairs. An existing file in another layout is rewritten into this
    one first (a JSON document is read whole, see agents(7)).
    """

    CLOSE = b"\n]\n"

    def __init__(self, location: Location, options: WriteOptions) -> None:
        path = location.path
        check_writable(path)
        self.output = output_of(location, options)
        records, self.repaired_bytes = _json_records(path)
        done = DoneIDs()
        for record in records:
            done.add(record.get(ID_KEY), is_error_record(record))
        self.ledger = Ledger(done, options.on_duplicate)
        self.count = len(records)
        _write_json_lines(path, records)
        self.stream = durable.DISK.open(path, "r+b")
        self.end = os.path.getsize(path) - (len(self.CLOSE) if self.count else len(b"]\n"))
        self.last_sync = time.monotonic()
        note_output(self.output)

    def write(self, record: Record) -> None:
        if not self.ledger.admit(record):
            return
        line = (b",\n" if self.count else b"") + orjson.dumps(record)
        self.stream.seek(self.end)
        self.stream.write(line + self.CLOSE)
        self.stream.flush()
        self.end += len(line)
        self.count += 1
        self.written += 1
        if time.monotonic() - self.last_sync >= FSYNC_SECONDS:
            durable.DISK.fsync(self.stream)
            self.last_sync = time.monotonic()

    def commit(self) -> None:
        durable.DISK.fsync(self.stream)
        self.stream.close()
        if self.ledger.superseded:
            records, _ = _json_records(self.output.path)
            standing = Standing(self.ledger.superseded, self.ledger.last_wins)
            keys = [record_key(record.get(ID_KEY)) for record in records]
            for position, (record, key) in enumerate(zip(records, keys, strict=True)):
                standing.see(key, position, is_error_record(record))
            kept = [
                record
                for position, (record, key) in enumerate(zip(records, keys, strict=True))
                if standing.stands(key, position)
            ]
            _write_json_lines(self.output.path, kept)

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            durable.DISK.fsync(self.stream)
        self.stream.close()


def _json_records(path: str) -> tuple[list[Record], int]:
    """The records of a JSON output, and how many bytes of a torn end were dropped."""
    if not os.path.exists(path) or not os.path.getsize(path):
        return [], 0
    with open(path, "rb") as stream:
        data = stream.read()
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        return torn_json_records(path, data)
    items = document if isinstance(document, list) else [document]
    return [item for item in items if isinstance(item, dict)], 0


def _write_json_lines(path: str, records: list[Record]) -> None:
    """Rewrite ``path`` atomically as ``[``, one record per line, ``]``."""
    body = b",\n".join(map(orjson.dumps, records))
    wanted = b"[\n" + body + b"\n]\n" if records else b"[]\n"
    if os.path.exists(path):
        with open(path, "rb") as stream:
            if stream.read() == wanted:
                return

    def fill(stream: BinaryIO) -> None:
        stream.write(wanted)

    durable.replace_whole(path, fill)


class SqliteTarget(LedgerTarget):
    def __init__(self, location: Location, options: WriteOptions) -> None:
        from agents.formats.sqlite import Writer

        if location.path == "-":
            raise UsageError("SQLite cannot be written to stdout", "give a database file path")
        check_writable(location.path)
        output = output_of(location, options)
        # Appending, the IDs already there are done; a one-shot write upserts over them, but
        # still names an ID that comes twice in its input (the table would keep one row).
        done = done_ids(output) if options.append else DoneIDs()
        self.ledger = Ledger(done, options.on_duplicate)
        self.append = options.append
        self.writer = Writer(location.path, output.table, durable=options.append)
        if options.append:
            note_output(output)

    def write(self, record: Record) -> None:
        if not self.ledger.admit(record):
            return
        self.writer.write(record)
        self.written += 1

    def write_many(self, records: list[Record]) -> None:
        for record in records:
            self.write(record)
        if self.append:  # appending: what has arrived is committed at once
            self.writer.flush()

    def commit(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        self.writer.abort()


def open_target(location: Location, options: WriteOptions, stdout: BinaryIO) -> Target:
    """The target for ``location`` in the mode ``options`` asks for."""
    fmt = location.format
    if fmt == "sqlite":
        return SqliteTarget(location, options)
    if location.path == "-":
        if options.append:
            raise UsageError("--append needs a file to append to, not stdout")
        return StreamTarget(fmt, options, stdout)
    if not options.append:
        return AtomicTarget(location, options)
    if location.path.endswith(".gz"):
        raise UsageError(
            "--append cannot add to a compressed file",
            "append to an uncompressed target and compress it at the end",
        )
    if fmt == "text":
        raise UsageError(
            "--append needs IDs, and text output keeps none",
            "append to JSONL, CSV, TSV, JSON or SQLite instead",
        )
    if fmt == "json":
        return JsonAppendTarget(location, options)
    return AppendTarget(location, options)


def write_locked(
    location: Location,
    options: WriteOptions,
    batches: Iterable[list[Record]],
    stdout: BinaryIO,
    *,
    wait: bool = False,
) -> Target:
    """Write ``batches`` to ``location`` as its one writer: the lock held, the target committed
    when they end, aborted (a one-shot target untouched) when anything fails on the way."""
    lock = WriterLock(location.path, wait=wait) if location.path != "-" else None
    if lock is not None:
        lock.acquire()
    try:
        target = open_target(location, options, stdout)
        try:
            for batch in batches:
                target.write_many(batch)
        except BaseException:
            target.abort()
            raise
        target.commit()
        return target
    finally:
        if lock is not None:
            lock.release()
