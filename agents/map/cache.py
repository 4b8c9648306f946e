"""The response cache (``--cache``): answers already paid for, in a SQLite file, found again by a
hash of everything that can change them.

The key (:func:`request_key`) holds the model as the server names it (or, for agents-local, the
model file's identity, since its port changes on every start), an optional scope the user gives
(several weights served under one name), the request exactly as it would be sent (the rendered
messages, every sampling parameter, the response format) and the output mode. Nothing else is:
not ``-j``, timeouts, limits or retry settings, not the record's ID, not the base URL, so several
endpoints serving one model, or a restarted local server, share the answers.

The file is shared by every process that names it (``parallel --pipe``, shards, a rate group):
WAL, a busy timeout, one short transaction per write. SQLite's journal survives a kill -9. A
file that is not one of ours, or not a database at all, is refused with its name and how to
start afresh; a file on a network file system, where WAL's shared memory is unsafe, is refused
before it is opened. It holds prompts and answers, so it is created readable by its owner only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from agents.errors import AgentsError, UsageError
from agents.map.http import Completion, Usage
from agents.map.prompt import Message

#: SQLite's application_id of a cache file ("agc1"): tells ours from any other database.
APPLICATION_ID = 0x61676331

#: The layout of the file; a file of another version is refused, not guessed at.
SCHEMA_VERSION = 3

#: How long a write waits for another process's transaction before failing.
BUSY_SECONDS = 30.0

#: File systems on which SQLite's WAL is unsafe (its shared-memory index needs one host's
#: memory): NFS, Lustre, SMB, and FUSE mounts of remote folders.
NETWORK_FILE_SYSTEMS = frozenset(
    {"nfs", "nfs4", "lustre", "cifs", "smb3", "smbfs", "afs", "ceph", "glusterfs", "9p"}
)

#: Hits counted in the file (their number, the last uses refreshed) in one transaction, in the
#: keys' order: a write per hit would cost more than the hit, and each write of a few rows
#: spread over the file rewrites as many pages. A kill -9 loses at most this many counts, never
#: an answer.
HITS_PER_WRITE = 20_000

#: An answer's last use (what `agents cache prune --older-than` goes by) is kept to within this
#: many seconds: a hit on one used more lately writes nothing, so that a rerun soon after the
#: first run (the common case) reads the file without rewriting a page of it for each hit.
USE_PRECISION = 3600.0

#: Answers kept are written this many at a time, or once the first of them waited this long
#: (seconds) when the next comes: a transaction per answer costs a miss a third of its time.
#: Until then this process finds them in memory; the others see them that much later.
PUTS_PER_WRITE = 64
PUT_DELAY = 0.25

#: Pages the WAL holds before it is folded back into the file.
CHECKPOINT_PAGES = 10000

#: SQLite's page cache, in KiB.
PAGE_CACHE_KIB = 64 << 10

#: Keys looked up in one query (well under SQLite's limit on a statement's parameters).
KEYS_PER_QUERY = 500

#: How long ``agents cache prune`` waits for readers to let go of the WAL before leaving it.
CHECKPOINT_WAIT_MS = 2000

_WRITE_HINT = (
    "is the disk full? the results written so far are kept; the same command with --resume "
    "carries on"
)

_HINT = "give --cache another path, or remove the file to start afresh"

#: Names a cache is never given: an input or output that an optional --cache PATH swallowed.
DATA_SUFFIXES = frozenset(
    {".csv", ".tsv", ".tab", ".json", ".jsonl", ".ndjson", ".txt", ".text", ".yaml", ".yml"}
)


def refuse_data_path(spelling: str | Path) -> None:
    """A cache is never named as data: an optional --cache PATH that swallowed an input (a
    data file's name, stdin's ``-``, a ``sqlite://`` URL, or a SQLite database that is not a
    cache)."""
    text = str(spelling)
    path = Path(text)
    if (
        text == "-"
        or text.startswith("sqlite://")
        or DATA_SUFFIXES & {suffix.lower() for suffix in path.suffixes}
        or _foreign_database(path)
    ):
        # `agents process --cache in.csv out.csv`: the optional PATH took the input.
        raise UsageError(
            f"--cache {text}: that names data, not a cache; give the cache's path as "
            "--cache=PATH, or --cache last, after the input and output"
        )


def _foreign_database(path: Path) -> bool:
    """Whether ``path`` is a SQLite database of some other program (its header says so)."""
    try:
        with path.open("rb") as stream:
            header = stream.read(100)
    except OSError:
        return False
    ours = APPLICATION_ID.to_bytes(4, "big")
    return header.startswith(b"SQLite format 3\x00") and header[68:72] not in (ours, bytes(4))


def default_path() -> Path:
    """``$XDG_CACHE_HOME/agents/responses.sqlite``, else under ``~/.cache``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "agents" / "responses.sqlite"


class RequestKeys:
    """The keys of one job's requests: all but the messages is the same for each of them, so
    it is hashed once, and each key hashes only its messages on top."""

    def __init__(
        self, model: str, settings: dict[str, Any], mode: str, scope: str | None = None
    ) -> None:
        head = orjson.dumps(
            {
                "v": SCHEMA_VERSION,
                "model": model,
                "scope": scope,
                "mode": mode,
                "request": settings,
            },
            option=orjson.OPT_SORT_KEYS,
        )
        self.head = hashlib.sha256(head + b"\n")

    def key(self, messages: list[Message]) -> bytes:
        # Messages are made in one order of their keys (role, content), so they need no sort.
        digest = self.head.copy()
        digest.update(orjson.dumps(messages))
        return digest.digest()


def request_key(model: str, request: dict[str, Any], mode: str, scope: str | None = None) -> bytes:
    """The key of one request: a SHA-256 of the model, the scope, the output mode, every field
    of the request but its model and messages (parameters, response_format) with keys sorted,
    so that the order options were given in does not matter, and then the messages."""
    settings = {name: value for name, value in request.items() if name not in ("model", "messages")}
    return RequestKeys(model, settings, mode, scope).key(request.get("messages", []))


def file_system_type(path: Path, mounts: str | None = None) -> str | None:
    """The type of the file system ``path`` is on, from /proc/self/mounts (or ``mounts``, its
    text, for tests); None where that cannot be told."""
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            return None
    target = os.path.realpath(path)
    best, kind = "", None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def _on_network(kind: str | None) -> bool:
    if kind is None:
        return False
    return kind in NETWORK_FILE_SYSTEMS or kind.startswith(("nfs", "fuse.sshfs", "fuse.s3"))


class ResponseCache:
    """One cache file, opened for this process."""

    def __init__(
        self,
        path: Path,
        mounts: str | None = None,
        *,
        create: bool = True,
        writable: bool = True,
        name: str | None = None,
        hint: str | None = None,
    ) -> None:
        """Open (and, with ``create``, make) the cache at ``path``. Not ``writable``
        (--cache-mode read-only): the file is only read, never made or written, not even its
        hits, so it may be one the user cannot write (a team's, in a read-only folder).
        ``name``, ``hint``: how messages name it (``--cache PATH`` unless said), and what
        they suggest for a file that is no cache."""
        self.path = path
        self.writable = writable
        self.name = name or f"--cache {path}"
        self.hint = hint or _HINT
        self.write_hint = _WRITE_HINT
        self.unread_wal = False  # read-only: a WAL beside the file, which is not read
        self.signature: tuple[int, int, int] | None = None  # read-only: the file as opened
        self.hits = 0  # this process's
        self.stored = 0
        self.uncounted = 0  # hits not yet counted in the file
        self.stale: list[bytes] = []  # answers hit whose last use the file has not to the hour
        # answers not yet in the file (each with the usage it was paid for), and when they came
        self.unsaved: dict[bytes, tuple[Completion, float]] = {}
        self.unsaved_since = 0.0
        self.replace = False  # --cache-mode refresh: a new answer replaces the one kept
        refuse_data_path(path)
        if (not create or not writable) and not path.exists():
            raise UsageError(
                f"{path}: no cache there",
                hint="agents-map --cache makes one; AGENTS_CACHE or a PATH names another",
            )
        if not create and path.is_file() and path.stat().st_size == 0:
            raise UsageError(f"{self.name}: an empty file, not a cache; {self.hint}")
        folder = path.parent
        try:
            if writable:
                folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as error:
            raise UsageError(
                f"{self.name}: cannot make its folder: {error.strerror}; {self.hint}"
            ) from None
        kind = file_system_type(folder, mounts)
        if _on_network(kind):
            raise UsageError(
                f"{self.name}: the folder is on a network file system ({kind}), where "
                "SQLite cannot share a cache safely between processes; put it on a local disk "
                "(for example --cache /tmp/$USER-agents.sqlite, or one in $TMPDIR on a cluster "
                "node)"
            )
        # Created by us, readable by the owner only, before SQLite opens it.
        try:
            if writable:
                os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        except OSError as error:
            raise UsageError(
                f"{self.name}: cannot open it for writing: {error.strerror}",
                hint="a cache is written to on every run (its hits are counted), so it needs a "
                "writable file on a local disk: give --cache another path, or use this one "
                "with --cache-mode read-only",
            ) from None
        if not path.is_file():
            raise UsageError(f"{self.name}: not a file; {self.hint}")
        try:
            self.db = self._connect_read_only() if not writable else self._connect()
            self._prepare()
        except sqlite3.DatabaseError as error:
            raise UsageError(f"{self.name}: not a usable cache ({error}); {self.hint}") from None

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=BUSY_SECONDS, isolation_level=None)
        db.execute(f"PRAGMA busy_timeout = {int(BUSY_SECONDS * 1000)}")
        return db

    def _connect_read_only(self) -> sqlite3.Connection:
        """The file opened for reading only, as it stands (``immutable``): SQLite's read-only
        WAL mode would make the -wal and -shm files beside it, owned by this user, and a
        cache's owner could then no longer write it. So the WAL is not read (what a writer has
        not folded back yet is a miss), and a file that changed since it was opened (a writer
        folded its WAL back) is opened again before the next lookup."""
        wal = self.path.with_name(self.path.name + "-wal")
        self.unread_wal = wal.exists() and wal.stat().st_size > 0
        self.signature = _signature(self.path)
        uri = f"file:{urllib.parse.quote(os.path.abspath(self.path))}?mode=ro&immutable=1"
        return sqlite3.connect(uri, uri=True, isolation_level=None)

    def _reopen_if_changed(self) -> None:
        if not self.writable and _signature(self.path) != self.signature:
            self.db.close()
            self.db = self._connect_read_only()
            self.db.execute(f"PRAGMA cache_size = -{PAGE_CACHE_KIB}")

    def _prepare(self) -> None:
        db = self.db
        application = db.execute("PRAGMA application_id").fetchone()[0]
        if (
            application == 0 and self.writable
        ):  # new, or foreign: decided under the write lock, in one look,
            # since another process may be making it ours between two reads
            db.execute("BEGIN IMMEDIATE")
            try:
                application = db.execute("PRAGMA application_id").fetchone()[0]
                tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
                stamped = db.execute("PRAGMA user_version").fetchone()[0]
                if application == 0 and not tables and not stamped:  # new: make it ours
                    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                    db.execute(
                        "CREATE TABLE answers (key BLOB PRIMARY KEY, content TEXT, "
                        "finish_reason TEXT, refusal TEXT, prompt_tokens INTEGER NOT NULL, "
                        "completion_tokens INTEGER NOT NULL, cached_tokens INTEGER NOT NULL, "
                        "reasoning_tokens INTEGER NOT NULL, created REAL NOT NULL, "
                        "used REAL NOT NULL) WITHOUT ROWID"
                    )
                    db.execute("CREATE TABLE totals (hits INTEGER NOT NULL)")
                    db.execute("INSERT INTO totals VALUES (0)")
                    application = APPLICATION_ID
                db.execute("COMMIT")
            except BaseException:
                self._roll_back()
                raise
        if application != APPLICATION_ID:
            raise UsageError(f"{self.name}: this file is not an agents cache; {self.hint}")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            raise UsageError(
                f"{self.name}: a cache of another version ({version}, this agents "
                f"reads {SCHEMA_VERSION}); {self.hint}"
            )
        # and keep more of it in memory than SQLite's 2 MB: the lookups of a rerun read pages
        # all over the file (the memory is taken only as pages are read)
        db.execute(f"PRAGMA cache_size = -{PAGE_CACHE_KIB}")
        if not self.writable:
            return
        db.execute("PRAGMA journal_mode = WAL")
        # In WAL mode NORMAL never corrupts the file; a power cut may lose the last answers
        # kept, which a cache can afford (FULL syncs every write: half the speed of a miss).
        db.execute("PRAGMA synchronous = NORMAL")
        # Answers land at random places in the file (their keys are hashes), so each write
        # touches pages all over it: fold the WAL back less often (40 MB, not 4), rewriting
        # each page once for many writes, and keep it from growing past that.
        db.execute(f"PRAGMA wal_autocheckpoint = {CHECKPOINT_PAGES}")
        db.execute(f"PRAGMA journal_size_limit = {CHECKPOINT_PAGES * 4096}")

    def get(self, key: bytes) -> Completion | None:
        """The answer stored under ``key`` (with the usage it was paid for), counted as a hit;
        None on a miss."""
        return self.get_many([key]).get(key)

    def get_many(self, keys: list[bytes]) -> dict[bytes, Completion]:
        """The answers stored under any of ``keys``, each counted as a hit: one query for a
        batch of records, as a query costs more than finding a key in it."""
        found = {key: self.unsaved[key][0] for key in keys if key in self.unsaved}
        asked = [key for key in keys if key not in found] if found else keys
        stale_before = time.time() - USE_PRECISION
        stale = self.stale
        self._reopen_if_changed()
        for start in range(0, len(asked), KEYS_PER_QUERY):
            part = asked[start : start + KEYS_PER_QUERY]
            try:
                rows = self._look_up(part)
            except sqlite3.DatabaseError as error:
                raise AgentsError(
                    f"{self.name}: could not read ({error})",
                    hint="run again without --cache, or with a new --cache PATH; the results "
                    "written so far are kept",
                ) from None
            for row in rows:  # (key, content, finish_reason, refusal, usage..., used)
                usage = Usage(row[4], row[5], row[6], row[7])
                found[row[0]] = Completion(row[1], row[2], row[3], usage)
                if row[8] < stale_before:
                    stale.append(row[0])
        hits = len(found) if len(found) == len(keys) else sum(key in found for key in keys)
        self.hits += hits
        self.uncounted += hits
        if self.uncounted >= HITS_PER_WRITE:
            self._count_hits()
        return found

    def _look_up(self, keys: list[bytes]) -> list[Any]:
        query = (
            "SELECT key, content, finish_reason, refusal, prompt_tokens, completion_tokens, "
            "cached_tokens, reasoning_tokens, used FROM answers "
            f"WHERE key IN ({', '.join('?' * len(keys))})"
        )
        try:
            return self.db.execute(query, keys).fetchall()
        except sqlite3.DatabaseError:
            if self.writable:
                raise
            # read as it stood while a writer folded its WAL back into it: once more, anew
            self.db.close()
            self.db = self._connect_read_only()
            return self.db.execute(query, keys).fetchall()

    def holds(self, key: bytes) -> bool:
        """Whether an answer is stored under ``key`` (not counted as a hit: --dry-run)."""
        row = self.db.execute("SELECT 1 FROM answers WHERE key = ?", (key,)).fetchone()
        return row is not None or key in self.unsaved

    def remember(self, key: bytes, answer: Completion) -> None:
        """Keep an answer for this run only (a file opened read-only is never written): found
        again by a later identical request, the oldest forgotten past RECENT_KEYS."""
        self.unsaved[key] = (answer, time.time())
        if len(self.unsaved) > RECENT_KEYS:
            del self.unsaved[next(iter(self.unsaved))]

    def put(self, key: bytes, answer: Completion) -> None:
        """Store a successful, complete answer, its usage the one it was paid for (the first one
        stored under a key stands, unless this run refreshes the cache). Answers are written a
        few at a time, and found meanwhile by this process; ``stored`` counts those written."""
        if not self.unsaved:
            self.unsaved_since = time.monotonic()
        if self.replace:
            self.unsaved[key] = (answer, time.time())
        else:
            self.unsaved.setdefault(key, (answer, time.time()))
        if (
            len(self.unsaved) >= PUTS_PER_WRITE
            or time.monotonic() - self.unsaved_since >= PUT_DELAY
        ):
            self._save()

    def flush(self) -> None:
        """Write the answers and the hit counts not yet in the file."""
        if not self.writable:
            return
        self._save()
        self._count_hits()

    def _save(self) -> None:
        rows = [
            (
                key,
                answer.content,
                answer.finish_reason,
                answer.refusal,
                answer.usage.prompt,
                answer.usage.completion,
                answer.usage.cached,
                answer.usage.reasoning,
                when,
                when,
            )
            for key, (answer, when) in self.unsaved.items()
        ]
        self.unsaved.clear()
        if rows:
            self.stored += self._transaction(
                (
                    f"INSERT OR {'REPLACE' if self.replace else 'IGNORE'} INTO answers "
                    "(key, content, finish_reason, refusal, prompt_tokens, completion_tokens, "
                    "cached_tokens, reasoning_tokens, created, used) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
            )

    def _count_hits(self) -> None:
        """Add this process's hits to the file's total, and refresh the stale last uses (not in
        a file opened read-only)."""
        if not self.uncounted or not self.writable:
            self.uncounted = 0
            self.stale.clear()
            return
        now = time.time()
        stale = [(now, key) for key in sorted(set(self.stale))]
        hits, self.uncounted = self.uncounted, 0
        self.stale.clear()
        self._transaction(
            ("UPDATE totals SET hits = hits + ?", [(hits,)]),
            ("UPDATE answers SET used = ? WHERE key = ?", stale),
        )

    def _transaction(self, *writes: tuple[str, list[tuple[Any, ...]]]) -> int:
        """Each statement for each of its rows, in one short transaction; the rows changed."""
        self._write("BEGIN IMMEDIATE", ())
        try:
            before = self.db.total_changes
            for statement, rows in writes:
                self.db.executemany(statement, rows)
            self.db.execute("COMMIT")
        except sqlite3.DatabaseError as error:
            self._roll_back()
            raise AgentsError(
                f"{self.name}: could not write ({error})", hint=self.write_hint
            ) from None
        except BaseException:
            self._roll_back()
            raise
        return self.db.total_changes - before

    def _roll_back(self) -> None:
        # SQLite has rolled back already after some errors (a full disk): then there is none
        if self.db.in_transaction:
            with contextlib.suppress(sqlite3.DatabaseError):
                self.db.execute("ROLLBACK")

    def _write(self, statement: str, values: tuple[Any, ...]) -> None:
        """One statement in its own short transaction (autocommit), so that the writers that
        share the file wait for each other only that long."""
        try:
            self.db.execute(statement, values)
        except sqlite3.DatabaseError as error:
            raise AgentsError(
                f"{self.name}: could not write ({error})", hint=self.write_hint
            ) from None

    def info(self) -> CacheInfo:
        """What the file holds (for ``agents cache info``)."""
        self.flush()
        entries, oldest, newest, last_used, content = self.db.execute(
            "SELECT count(*), min(created), max(created), max(used), "
            f"ifnull(sum({ROW_BYTES}), 0) FROM answers"
        ).fetchone()
        (hits,) = self.db.execute("SELECT hits FROM totals").fetchone()
        return CacheInfo(
            path=str(self.path),
            entries=entries,
            hits=hits,
            oldest=oldest,
            newest=newest,
            last_used=last_used,
            content_bytes=content,
            file_bytes=_file_bytes(self.path),
        )

    def prune(self, unused_for: float | None = None, max_bytes: int | None = None) -> int:
        """Forget the answers not used for ``unused_for`` seconds, then the least recently
        used ones until what is kept fits in ``max_bytes``; the file is then compacted. The
        number of answers forgotten."""
        self.flush()
        self._write("BEGIN IMMEDIATE", ())
        try:
            removed = 0
            if unused_for is not None:
                cursor = self.db.execute(
                    "DELETE FROM answers WHERE used < ?", (time.time() - unused_for,)
                )
                removed += cursor.rowcount
            if max_bytes is not None:
                kept, newest_first = 0, []
                for key, size in self.db.execute(
                    f"SELECT key, {ROW_BYTES} FROM answers ORDER BY used DESC, created DESC"
                ):
                    kept += size
                    if kept > max_bytes:
                        newest_first.append((key,))
                self.db.executemany("DELETE FROM answers WHERE key = ?", newest_first)
                removed += len(newest_first)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        if removed:
            # Gives the freed pages back to the file system; waits for the other processes'
            # transactions (the busy timeout) rather than failing.
            self._write("VACUUM", ())
            # VACUUM went through the WAL: fold it back and empty it, unless a reader holds
            # it for long (then it empties at a later checkpoint).
            self.db.execute(f"PRAGMA busy_timeout = {CHECKPOINT_WAIT_MS}")
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            self.db.execute(f"PRAGMA busy_timeout = {int(BUSY_SECONDS * 1000)}")
        return removed

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.db.close()


#: What one stored answer takes, roughly: its columns' bytes and a row's overhead.
ROW_BYTES = (
    "(length(key) + ifnull(length(content), 0) + ifnull(length(refusal), 0) "
    "+ ifnull(length(finish_reason), 0) + 56)"
)


@dataclass(frozen=True, slots=True)
class CacheInfo:
    """``agents cache info``: the file's entries, hits and ages (times are Unix seconds)."""

    path: str
    entries: int
    hits: int  # hits over the file's life
    oldest: float | None  # when the oldest answer was kept
    newest: float | None
    last_used: float | None  # (to within USE_PRECISION)
    content_bytes: int  # what the answers take, roughly
    file_bytes: int  # the file with its WAL


def _signature(path: Path) -> tuple[int, int, int]:
    info = path.stat()
    return info.st_ino, info.st_size, info.st_mtime_ns


def _file_bytes(path: Path) -> int:
    total = 0
    for part in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(OSError):  # no WAL: nothing to add
            total += part.stat().st_size
    return total


#: --cache-mode: hits used and new answers stored; no hits, new answers stored; hits used,
#: nothing stored.
MODES = ("use", "refresh", "read-only")

#: Keys of answers kept lately that are remembered (their keys only: flat memory), more than the
#: records of a batch read at once, which are all looked up before the first is answered.
RECENT_KEYS = 20_000


@dataclass
class CacheUse:
    """How a run uses its cache: the file, the mode, and what keys the requests (the model as
    the server names it, the user's scope, the output mode); what it saved."""

    store: ResponseCache
    mode: str
    model: str
    output: str
    scope: str | None = None
    shares: bool = True  # identical requests share one (no --no-dedup)
    saved: Usage = field(default_factory=Usage)  # the usage of the answers replayed
    recent: dict[bytes, None] = field(default_factory=dict)  # keys kept lately, oldest first
    replayed: dict[bytes, None] = field(default_factory=dict)  # keys replayed lately, likewise

    def __post_init__(self) -> None:
        self.store.replace = self.mode == "refresh"

    def keys(self, settings: dict[str, Any]) -> RequestKeys:
        """The keys of requests made with ``settings`` (all of a request but its messages)."""
        return RequestKeys(self.model, settings, self.output, self.scope)

    def answer(self, key: bytes) -> Completion | None:
        """The stored answer to replay, unless this run refreshes the cache."""
        return self.answers([key]).get(key)

    def answers(self, keys: list[bytes]) -> dict[bytes, Completion]:
        """The stored answers to replay among ``keys`` (none when this run refreshes)."""
        if self.mode == "refresh":  # only what this run has asked (and kept) already
            keys = [key for key in keys if key in self.recent]
            if not keys:
                return {}
        replayed = self.store.get_many(keys)
        for key in keys:  # a key asked twice is replayed twice
            if key in replayed:
                self._count_saving(key, replayed[key])
        return replayed

    def _count_saving(self, key: bytes, answer: Completion) -> None:
        """Add what a replayed answer cost to what the cache saved, once per answer in a run:
        records asking the same question would have shared one request without a cache too
        (unless --no-dedup), so "saved" never claims more than was paid for what was replayed.
        (Remembered for the last RECENT_KEYS answers: a question asked again after that many
        others is counted again.)"""
        if self.shares:
            if key in self.replayed:
                return
            self.replayed[key] = None
            if len(self.replayed) > RECENT_KEYS:
                del self.replayed[next(iter(self.replayed))]
        self.saved.add(answer.usage)

    def kept_lately(self, key: bytes) -> bool:
        """Whether this process kept an answer under ``key`` lately: a record looked up before
        that answer came is looked up again, so that it is not asked twice."""
        return key in self.recent

    def keep(self, key: bytes, completion: Completion, paid: Usage | None = None) -> None:
        """Store an answer that was accepted (complete, and valid for this output), with what
        the record paid for it (``paid``: its re-asks too; else the answer's own usage)."""
        self.recent[key] = None
        if len(self.recent) > RECENT_KEYS:
            del self.recent[next(iter(self.recent))]  # the oldest
        usage = paid if paid is not None else completion.usage
        kept = Usage(usage.prompt, usage.completion, usage.cached, usage.reasoning)  # a copy
        answer = Completion(completion.content, completion.finish_reason, completion.refusal, kept)
        if self.mode == "read-only":  # nothing written: kept for this run's later requests
            self.store.remember(key, answer)
        else:
            self.store.put(key, answer)


__all__ = [
    "MODES",
    "CacheInfo",
    "CacheUse",
    "RequestKeys",
    "ResponseCache",
    "default_path",
    "file_system_type",
    "refuse_data_path",
    "request_key",
]
