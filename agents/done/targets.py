"""agents-write's targets: the choice of one, and the durable ones that --append grows.

* one-shot (the default): see :mod:`agents.formats.write`.
* append (``--append``): records are added to the existing target as they arrive and flushed
  one by one; a torn last line left by a crash is repaired first; an ID already present as a
  success is skipped, and a newer record replaces an ID's earlier error record.

SQLite targets are always upserts keyed by the ID, in batched transactions.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import BinaryIO

import orjson

from agents.contract.error_record import is_error_record
from agents.contract.ids import ID_KEY, Record, canonical_id
from agents.done.compaction import compact_file, record_key
from agents.done.ids import DoneIDs, done_ids
from agents.done.repair import repair_torn_csv, repair_torn_jsonl
from agents.errors import InvalidID, TargetError, UsageError
from agents.formats import Location
from agents.formats._io import AtomicFile, check_writable
from agents.formats._options import WriteOptions
from agents.formats.write import AtomicTarget, StreamTarget, Target, format_writer

#: How often an append-mode target is fsynced while records arrive.
FSYNC_SECONDS = 1.0


class _Skipper:
    """The append-mode rule: skip IDs done as successes, let newer records replace errors."""

    def __init__(self, done: DoneIDs) -> None:
        self.done = done
        self.replaced: set[str] = set()

    def admit(self, record: Record) -> bool:
        if ID_KEY not in record:
            return True
        try:
            key = canonical_id(record[ID_KEY])
        except InvalidID:
            return True
        if key in self.done.succeeded:
            return False
        failed = is_error_record(record)
        if key in self.done.failed:
            self.replaced.add(key)
        self.done.add(key, failed)
        return True


class AppendTarget(Target):
    """JSONL, CSV or TSV appended to in place, one flushed write per record."""

    def __init__(self, location: Location, options: WriteOptions) -> None:
        path, fmt = location.path, location.format
        check_writable(path)
        if os.path.exists(path):
            if fmt == "jsonl":
                self.repaired_bytes = repair_torn_jsonl(path)
            else:
                self.repaired_bytes = repair_torn_csv(path, fmt, options.delimiter)
        self.location = location
        self.options = options
        self.skipper = _Skipper(done_ids(path, fmt, delimiter=options.delimiter))
        existing: list[str] | None = None
        if fmt in ("csv", "tsv") and os.path.exists(path) and os.path.getsize(path):
            from agents.formats.csv import read_header

            existing = read_header(path, fmt, options.delimiter)
        self.stream: BinaryIO = open(path, "r+b" if os.path.exists(path) else "w+b")
        self.stream.seek(0, os.SEEK_END)
        self.writer = format_writer(fmt, self.stream, options, existing)
        self.last_sync = time.monotonic()

    @property
    def skipped_ids(self) -> int:
        return self.skipped

    def write(self, record: Record) -> None:
        if not self.skipper.admit(record):
            self.skipped += 1
            return
        self.writer.write(record)
        self.writer.flush()
        self.written += 1
        if time.monotonic() - self.last_sync >= FSYNC_SECONDS:
            os.fsync(self.stream.fileno())
            self.last_sync = time.monotonic()

    def commit(self) -> None:
        self.writer.close()
        self.stream.flush()
        os.fsync(self.stream.fileno())
        self.stream.close()
        if self.skipper.replaced:
            compact_file(
                self.location.path,
                self.location.format,
                self.options.delimiter,
                self.skipper.replaced,
            )

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()
            self.stream.flush()
            os.fsync(self.stream.fileno())
        self.stream.close()


class JsonAppendTarget(Target):
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
        self.location = location
        self.skipper = _Skipper(DoneIDs())
        records, self.repaired_bytes = _json_records(path)
        for record in records:
            self.skipper.admit(record)
        self.skipper.replaced.clear()
        self.count = len(records)
        _write_json_lines(path, records)
        self.stream: BinaryIO = open(path, "r+b")
        self.end = os.path.getsize(path) - (len(self.CLOSE) if self.count else len(b"]\n"))
        self.last_sync = time.monotonic()

    def write(self, record: Record) -> None:
        if not self.skipper.admit(record):
            self.skipped += 1
            return
        line = (b",\n" if self.count else b"") + orjson.dumps(record)
        self.stream.seek(self.end)
        self.stream.write(line + self.CLOSE)
        self.stream.flush()
        self.end += len(line)
        self.count += 1
        self.written += 1
        if time.monotonic() - self.last_sync >= FSYNC_SECONDS:
            os.fsync(self.stream.fileno())
            self.last_sync = time.monotonic()

    def commit(self) -> None:
        os.fsync(self.stream.fileno())
        self.stream.close()
        if self.skipper.replaced:
            records, _ = _json_records(self.location.path)
            keys = [record_key(record.get(ID_KEY)) for record in records]
            last = {key: index for index, key in enumerate(keys)}
            kept = [
                record
                for index, (record, key) in enumerate(zip(records, keys, strict=True))
                if key not in self.skipper.replaced or last[key] == index
            ]
            _write_json_lines(self.location.path, kept)

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.stream.flush()
            os.fsync(self.stream.fileno())
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
        return _torn_json_records(path, data)
    items = document if isinstance(document, list) else [document]
    return [item for item in items if isinstance(item, dict)], 0


def _torn_json_records(path: str, data: bytes) -> tuple[list[Record], int]:
    """Records of a file in the one-per-line layout whose end a crash tore off."""
    lines = data.split(b"\n")
    if not lines or lines[0].strip() != b"[":
        raise TargetError(
            f"{path}: the existing output is not valid JSON",
            "fix or move it, or write to a new file",
        )
    records: list[Record] = []
    kept = len(lines[0]) + 1
    for line in lines[1:]:
        body = line.rstrip().removesuffix(b",")
        try:
            record = orjson.loads(body)
        except orjson.JSONDecodeError:
            break
        if not isinstance(record, dict):
            break
        records.append(record)
        kept += len(line) + 1
    return records, max(0, len(data) - kept)


def _write_json_lines(path: str, records: list[Record]) -> None:
    """Rewrite ``path`` atomically as ``[``, one record per line, ``]``."""
    body = b",\n".join(map(orjson.dumps, records))
    wanted = b"[\n" + body + b"\n]\n" if records else b"[]\n"
    if os.path.exists(path):
        with open(path, "rb") as stream:
            if stream.read() == wanted:
                return
    file = AtomicFile(path)
    try:
        file.stream.write(wanted)
        file.commit()
    except BaseException:
        file.abort()
        raise


class SqliteTarget(Target):
    def __init__(self, location: Location, options: WriteOptions) -> None:
        from agents.formats.sqlite import Writer

        if location.path == "-":
            raise UsageError("SQLite cannot be written to stdout", "give a database file path")
        check_writable(location.path)
        table = options.table or location.table
        self.skipper = (
            _Skipper(done_ids(location.path, "sqlite", table=table or "records"))
            if options.append
            else None
        )
        self.writer = Writer(location.path, table, durable=options.append)

    def write(self, record: Record) -> None:
        if self.skipper is not None and not self.skipper.admit(record):
            self.skipped += 1
            return
        self.writer.write(record)
        self.written += 1

    def write_many(self, records: list[Record]) -> None:
        for record in records:
            self.write(record)
        if self.skipper is not None:  # appending: what has arrived is committed at once
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
