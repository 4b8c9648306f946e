"""SQLite: read with a query or a table, always read-only; written as upserts keyed by the ID.

Reading opens the file in SQLite's read-only mode *and* installs an authorizer that allows only
reads, so no query (UPDATE, INSERT, CREATE, ATTACH, a WAL pragma) can change a byte or leave a
-wal/-shm file behind. Writing creates the table from the records with the ID as TEXT primary key,
adds columns for new keys, and replaces a row whose ID comes again, in batched transactions.

Types: integers, reals, text and nulls are stored as they are. Objects and arrays go to a column
declared ``JSON`` (its values are JSON text and are parsed again when read); booleans become 0/1.
A JSON column's value that does not parse, and text that is not UTF-8, are bad rows that name
their column.
"""

from __future__ import annotations

import base64
import contextlib
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import orjson

from agents.contract.codec import loads
from agents.contract.ids import ID_KEY, Record, canonical_id, id_problem
from agents.errors import AgentsError, DataError, InvalidID, SourceError, TargetError, UsageError
from agents.formats._encodings import HALF_A_PAIR, SURROGATE_HINT, lone_surrogate
from agents.formats._options import BadRowHandler, Positioned, ReadOptions, raise_bad

JSON_TYPE = "JSON"


class _Converters:
    """How SQLite's bytes become values while a source is read.

    A JSON column's text that does not parse, and text that is not UTF-8, would raise in the
    middle of a fetch, losing the rows fetched with them and reported as an internal or SQL
    error. Each becomes a marker instead, counted in ``failures``; the reader names it with
    its row and column (:func:`_odd_value`).
    """

    def __init__(self) -> None:
        self.failures = 0

    def json(self, data: bytes) -> Any:
        try:
            return loads(data)
        except orjson.JSONDecodeError:
            self.failures += 1
            return _NotJson(data)

    def text(self, data: bytes) -> Any:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            self.failures += 1
            return _NotUtf8(data)


class _NotJson:
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class _NotUtf8:
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


@contextlib.contextmanager
def _only_json_converted(converters: _Converters) -> Iterator[None]:
    """While a source is read: JSON columns decoded, every other value passed through unchanged
    (Python's DATE and TIMESTAMP converters would reformat, or crash on, such columns). The
    sqlite3 module's converters are global, so they are put back as they were afterwards: a
    program using agents as a library keeps its own."""
    saved = dict(sqlite3.converters)
    sqlite3.converters.pop("DATE", None)
    sqlite3.converters.pop("TIMESTAMP", None)
    sqlite3.register_converter(JSON_TYPE, converters.json)
    try:
        yield
    finally:
        sqlite3.converters.clear()
        sqlite3.converters.update(saved)


_READ_ACTIONS = {
    sqlite3.SQLITE_SELECT,
    sqlite3.SQLITE_READ,
    sqlite3.SQLITE_FUNCTION,
    getattr(sqlite3, "SQLITE_RECURSIVE", 33),
}

# SQLite's authorizer action codes (sqlite3.h), named for the error message. Python's sqlite3
# module mixes these constants with result codes of the same values, so they are listed here.
_ACTION_NAMES = dict(
    enumerate(
        [
            "CREATE INDEX",
            "CREATE TABLE",
            "CREATE TEMP INDEX",
            "CREATE TEMP TABLE",
            "CREATE TEMP TRIGGER",
            "CREATE TEMP VIEW",
            "CREATE TRIGGER",
            "CREATE VIEW",
            "DELETE",
            "DROP INDEX",
            "DROP TABLE",
            "DROP TEMP INDEX",
            "DROP TEMP TABLE",
            "DROP TEMP TRIGGER",
            "DROP TEMP VIEW",
            "DROP TRIGGER",
            "DROP VIEW",
            "INSERT",
            "PRAGMA",
            "READ",
            "SELECT",
            "TRANSACTION",
            "UPDATE",
            "ATTACH",
            "DETACH",
            "ALTER TABLE",
            "REINDEX",
            "ANALYZE",
            "CREATE VTABLE",
            "DROP VTABLE",
            "FUNCTION",
            "SAVEPOINT",
            "RECURSIVE",
        ],
        start=1,
    )
)


def quote_name(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _ReadOnlyGuard:
    """An authorizer that lets a statement read and nothing else, remembering what it refused.

    SQLite stops at the first refusal, which for CREATE or DROP is the write to its schema
    table; the message then names the statement by its leading keywords instead.
    """

    def __init__(self, sql: str) -> None:
        self.sql = sql
        self.refused: str | None = None

    def __call__(self, action: int, table: str | None, *_: object) -> int:
        if action in _READ_ACTIONS:
            return sqlite3.SQLITE_OK
        if self.refused is None:
            internal = bool(table and table.startswith("sqlite_"))
            self.refused = (
                _leading_keywords(self.sql)
                if internal
                else _ACTION_NAMES.get(action, f"action {action}")
            )
        return sqlite3.SQLITE_DENY


def _leading_keywords(sql: str) -> str:
    words = sql.split()[:3]
    if len(words) > 1 and words[0].upper() in ("CREATE", "DROP", "ALTER"):
        return " ".join(word.upper() for word in words[:2])
    return words[0].upper() if words else "write"


def _open_read_only(path: str) -> sqlite3.Connection:
    if path == "-":
        raise UsageError("SQLite cannot be read from stdin", "give the database file's path")
    if not os.path.exists(path):
        raise SourceError(f"{path}: no such file")
    if not os.access(path, os.R_OK):
        raise SourceError(f"{path}: cannot read the file: permission denied")
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
    if _wal_mode(path) and not os.path.exists(path + "-wal"):
        # Even read-only, SQLite creates -wal and -shm files to read a WAL database. With no
        # -wal file there is no writer with the file open, so it can be read as immutable,
        # which creates nothing.
        uri += "&immutable=1"
    try:
        connection = sqlite3.connect(uri, uri=True, detect_types=sqlite3.PARSE_DECLTYPES)
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as error:
        raise SourceError(
            f"{path}: not a SQLite database ({error})", "name the file's real format with --format"
        ) from None
    return connection


def _wal_mode(path: str) -> bool:
    """True when the file's header says it is a WAL database (format versions 2 and 2)."""
    with open(path, "rb") as stream:
        header = stream.read(20)
    return header.startswith(b"SQLite format 3\x00") and header[18:20] == b"\x02\x02"


def _table_names(connection: sqlite3.Connection) -> list[str]:
    rows = connection.execute(
        "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
        "AND name NOT LIKE 'sqlite_%' ORDER BY name"
    )
    return [row[0] for row in rows]


def _table_query(connection: sqlite3.Connection, table: str, path: str) -> tuple[str, bool]:
    """SQL that reads ``table`` in key order, and whether its first column is the rowid."""
    names = _table_names(connection)
    if table not in names:
        listing = ", ".join(names) if names else "none"
        raise SourceError(f"{path}: no table named {table!r}", f"tables: {listing}")
    info = connection.execute(f"PRAGMA table_info({quote_name(table)})").fetchall()
    keys = [row[1] for row in sorted(info, key=lambda row: row[5]) if row[5] > 0]
    if len(keys) == 1:
        return f"SELECT * FROM {quote_name(table)} ORDER BY {quote_name(keys[0])}", False
    try:
        sql = f"SELECT _rowid_, * FROM {quote_name(table)} ORDER BY _rowid_"
        connection.execute(sql + " LIMIT 0")
        return sql, True
    except sqlite3.OperationalError:  # a view, or a table WITHOUT ROWID
        return f"SELECT * FROM {quote_name(table)}", False


def read(path: str, options: ReadOptions, bad: BadRowHandler = raise_bad) -> Positioned:
    connection = _open_read_only(path)
    converters = _Converters()
    try:
        with _only_json_converted(converters):
            yield from _read(connection, path, options, converters, bad)
    finally:
        connection.close()


def _read(
    connection: sqlite3.Connection,
    path: str,
    options: ReadOptions,
    converters: _Converters,
    bad: BadRowHandler,
) -> Positioned:
    with_rowid, key_column = False, None
    if options.query:
        sql = options.query
    else:
        table = options.table
        if table is None:
            tables = _table_names(connection)
            if len(tables) != 1:
                listing = ", ".join(tables) if tables else "none"
                raise UsageError(
                    f"{path}: say which table to read with --table or -q", f"tables: {listing}"
                )
            table = tables[0]
        sql, with_rowid = _table_query(connection, table, path)
        info = connection.execute(f"PRAGMA table_info({quote_name(table)})").fetchall()
        keys = [row[1] for row in info if row[5] > 0]
        key_column = keys[0] if len(keys) == 1 else None
    guard = _ReadOnlyGuard(sql)
    connection.set_authorizer(guard)
    names: list[str] = []
    own_id = False
    number = 0
    for cursor, rows, odd in _batches(connection, sql, guard, path, converters):
        if not names:
            names = [column[0] for column in cursor.description or ()]
            if with_rowid:
                names = names[1:]
            own_id = ID_KEY in names
        for row in rows:
            number += 1
            values: Any = row[1:] if with_rowid else row
            if odd and (problem := _odd_value(names, values)):
                bad(DataError(f"{path}: row {number}", *problem))
                continue
            if bytes in map(type, values):
                values = [_blob(value) for value in values]
            record: Record = {ID_KEY: number}
            record.update(zip(names, values, strict=True))
            if own_id:  # the source's own ID column wins, as for every format
                if not_an_id := id_problem(record):
                    raise DataError(f"{path}: row {number}", not_an_id)
            elif with_rowid:
                record[ID_KEY] = row[0]
            elif key_column is not None:
                record[ID_KEY] = record[key_column]
            yield record


NOT_UTF8 = "Could not decode to UTF-8"  # the sqlite3 module's words for such text


def _batches(
    connection: sqlite3.Connection,
    sql: str,
    guard: _ReadOnlyGuard,
    path: str,
    converters: _Converters,
) -> Iterator[tuple[sqlite3.Cursor, list[Any], bool]]:
    """The query's rows in batches, each with whether a value in it became a marker.

    Text that is not UTF-8 stops the sqlite3 module's fetch, and the rows fetched with it are
    lost: the query is then run again with such text read as a marker, past the rows already
    given (the file is read-only, so the same query gives the same rows, unless it asks for
    random ones). That costs nothing until it happens; a Python text factory from the start
    would slow every read down by a third.
    """
    try:
        cursor = connection.execute(sql)
    except sqlite3.Error as error:
        raise _query_error(error, guard, path) from None
    given = 0
    while True:
        failures = converters.failures
        try:
            rows = cursor.fetchmany(1000)
        except sqlite3.Error as error:
            if NOT_UTF8 not in str(error) or connection.text_factory == converters.text:
                failure = _query_error(error, guard, path)
                if given:  # rows are out already: not "nothing was done" (exit 2) but a failure
                    raise AgentsError(
                        f"{failure.message} (after {given:,} rows)", failure.hint
                    ) from None
                raise failure from None
            connection.text_factory = converters.text
            cursor = connection.execute(sql)
            skipped = 0
            while skipped < given and (rows := cursor.fetchmany(min(given - skipped, 1000))):
                skipped += len(rows)
            continue
        if not rows:
            return
        given += len(rows)
        yield cursor, rows, converters.failures != failures


def _odd_value(names: list[str], values: Any) -> tuple[str, str] | None:
    """The message and hint for the first value of a row that is a marker, if any."""
    for name, value in zip(names, values, strict=True):
        column = _sql_name(name)
        if isinstance(value, _NotJson):
            if (found := lone_surrogate(value.data)) is not None:
                where = "" if found.place == "the value" else f"{found.place} "
                return (
                    f"column {name!r} (declared {JSON_TYPE}): {where}holds {found.escape}, "
                    f"{HALF_A_PAIR}",
                    SURROGATE_HINT,
                )
            return (
                f"column {name!r} is declared {JSON_TYPE} but holds {_preview(value.data)}, "
                "which is not JSON",
                f"select CAST({column} AS TEXT) AS {column} in a -q query to read it as text",
            )
        if isinstance(value, _NotUtf8):
            return (
                f"column {name!r} holds text that is not UTF-8: {_preview(value.data)}",
                f"SQLite text is UTF-8: select CAST({column} AS BLOB) AS {column} in a -q "
                "query to read its bytes (as base64), or fix the value",
            )
    return None


def _preview(data: bytes, size: int = 40) -> str:
    text = data.decode("utf-8", "backslashreplace")
    return "'" + (text if len(text) <= size else text[:size] + "…") + "'"


def _sql_name(name: str) -> str:
    """A column's name as SQL: bare when it is a plain identifier."""
    return name if name.isidentifier() and name.isascii() else quote_name(name)


def _blob(value: object) -> object:
    """BLOBs as text when they are UTF-8, else base64 (JSON has no bytes)."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(value).decode("ascii")
    return value


def _query_error(error: sqlite3.Error, guard: _ReadOnlyGuard, path: str) -> SourceError:
    if guard.refused is not None or "not authorized" in str(error):
        return SourceError(
            f"{path}: the query tries to change the database ({guard.refused or 'write'}); "
            "agents-read opens SQLite read-only",
            "read with SELECT; write with agents-write",
        )
    if "readonly" in str(error) or "read-only" in str(error):
        return SourceError(
            f"{path}: the query tries to change the database; agents-read opens SQLite read-only"
        )
    return SourceError(f"{path}: SQL error: {error}")


# Writing ------------------------------------------------------------------------------------

BATCH_RECORDS = 1000
BATCH_SECONDS = 1.0


class Writer:
    """Upserts records into one table, committing every 1,000 records or every second."""

    def __init__(self, path: str, table: str | None, durable: bool = False) -> None:
        self.path = path
        self.table = table or "records"
        try:
            self.connection = sqlite3.connect(path, isolation_level=None, timeout=30)
            self.connection.execute("PRAGMA schema_version").fetchone()
            if durable:
                # Appending as results arrive: WAL makes each small commit cheap, and a reader
                # (agents-map --resume) is never blocked by the writer.
                self.connection.execute("PRAGMA journal_mode=WAL")
                self.connection.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.DatabaseError as error:
            raise TargetError(f"{path}: not a SQLite database ({error})") from None
        self.types = self._existing_columns()
        if self.types and ID_KEY not in self.types:
            raise TargetError(
                f"{path}: table {self.table!r} exists without an {ID_KEY} column",
                "write to a new table with --table NAME",
            )
        self.statements: dict[tuple[str, ...], str] = {}
        self.pending = 0
        self.batch_started = 0.0
        self.count = 0

    def _existing_columns(self) -> dict[str, str]:
        info = self.connection.execute(f"PRAGMA table_info({quote_name(self.table)})").fetchall()
        return {row[1]: (row[2] or "").upper() for row in info}

    def _create(self, record: Record) -> None:
        columns = [f"{quote_name(ID_KEY)} TEXT PRIMARY KEY NOT NULL"]
        for key, value in record.items():
            if key != ID_KEY:
                columns.append(f"{quote_name(key)}{self._declared(value)}")
        self.connection.execute(f"CREATE TABLE {quote_name(self.table)} ({', '.join(columns)})")
        self.types = self._existing_columns()

    @staticmethod
    def _declared(value: object) -> str:
        return f" {JSON_TYPE}" if isinstance(value, dict | list) else ""

    def _add_columns(self, record: Record) -> None:
        for key, value in record.items():
            if key not in self.types:
                self.connection.execute(
                    f"ALTER TABLE {quote_name(self.table)} "
                    f"ADD COLUMN {quote_name(key)}{self._declared(value)}"
                )
                self.types[key] = JSON_TYPE if self._declared(value) else ""

    def write(self, record: Record) -> None:
        self.count += 1
        if ID_KEY not in record:
            raise DataError(
                f"record {self.count}",
                f"has no {ID_KEY}; SQLite rows are keyed by it",
                "read the data through agents-read, which gives every record an ID",
            )
        try:
            record_id = canonical_id(record[ID_KEY])
        except InvalidID as error:
            raise DataError(f"record {self.count}", f"bad {ID_KEY}: {error}") from None
        if not self.pending:
            self.connection.execute("BEGIN IMMEDIATE")
            self.batch_started = time.monotonic()
        if any("\x00" in key for key in record):
            raise DataError(
                f"record {self.count}",
                "has a key with a NUL character, which SQLite cannot name a column",
            )
        try:
            self._store(record, record_id)
        except (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.OperationalError) as error:
            raise DataError(
                f"{self.path}: table {self.table!r}, record {self.count} ({ID_KEY} {record_id})",
                f"SQLite refused it: {error}",
                "fix the record or the table, or write to a new table with --table NAME; "
                "the records before it are kept",
            ) from None
        self.pending += 1
        if self.pending >= BATCH_RECORDS or time.monotonic() - self.batch_started >= BATCH_SECONDS:
            self.flush()

    def _store(self, record: Record, record_id: str) -> None:
        if not self.types:
            self._create(record)
        elif not record.keys() <= self.types.keys():
            self._add_columns(record)
        keys = tuple(record)
        statement = self.statements.get(keys)
        if statement is None:
            statement = (
                f"INSERT OR REPLACE INTO {quote_name(self.table)} "
                f"({', '.join(map(quote_name, keys))}) VALUES ({', '.join('?' * len(keys))})"
            )
            self.statements[keys] = statement
        values = [self._value(key, value) for key, value in record.items()]
        values[keys.index(ID_KEY)] = record_id
        self.connection.execute(statement, values)

    def _value(self, key: str, value: Any) -> Any:
        if value is None:
            return None
        if self.types.get(key) == JSON_TYPE:
            return orjson.dumps(value).decode()
        if isinstance(value, dict | list):
            return orjson.dumps(value).decode()
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int) and not -(2**63) <= value < 2**63:
            return str(value)  # beyond SQLite's 64-bit integers: kept exactly, as text
        return value

    def flush(self) -> None:
        if self.pending:
            self.connection.execute("COMMIT")
            self.pending = 0

    def close(self) -> None:
        self.flush()
        self.connection.close()

    def abort(self) -> None:
        """Keep what was committed; the open batch is committed too, since each row is whole."""
        try:
            self.flush()
        finally:
            self.connection.close()
