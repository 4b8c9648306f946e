"""What a batch job has done, kept in a folder so that a crash, a Ctrl-C or a detached run
never leads to a second submission: ``$XDG_STATE_HOME/agents/batches/KEY/``.

The job is cut into *parts*, each one batch on the server. A part's files are written (and
synced) before its line in the journal says it exists, and each step of its life is one more
journal line, written after the step happened:

* ``{"part": N, "count": C, "bytes": B, "from": P}`` planned: ``part-N.records.jsonl`` (each
  record with the messages to send and its attempts so far) and ``part-N.requests.jsonl`` (the
  input file to upload) are complete; ``from`` names the part whose failed lines it retries;
* ``{"part": N, "file": ID}`` uploaded; ``{"part": N, "batch": ID}`` created on the server;
* ``{"part": N, "ended": STATUS, "counts": {...}}`` ended, and its output and error files are
  downloaded beside the others;
* ``{"part": N, "emitted": true}`` its results written to stdout, its failed lines planned
  again; ``{"part": N, "forgotten": true}`` its files deleted, here and on the server.

A crash between "uploaded" and "created" is the one step the journal cannot tell: the batch
may exist. Each batch is created with ``metadata`` naming the job and the part, so a rerun
looks for it on the server before creating it again (:func:`agents.batch.run` does).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from agents.errors import AgentsError, UsageError

#: States of a batch after which it changes no more.
ENDED = frozenset({"completed", "failed", "expired", "cancelled"})


#: How long the folder of a job whose results were all written out is kept: a rerun of the
#: same command within it writes them again from the copies here, without a request.
KEEP_FINISHED_SECONDS = 7 * 86400.0


def remove_finished(home: Path, now: float | None = None) -> None:
    """Remove the folders of jobs finished more than KEEP_FINISHED_SECONDS ago (not one in
    use: its lock is taken first)."""
    now = time.time() if now is None else now
    try:
        folders = list(home.iterdir())
    except OSError:
        return
    for folder in folders:
        journal = folder / "journal.jsonl"
        try:
            if now - journal.stat().st_mtime < KEEP_FINISHED_SECONDS:
                continue
            state = BatchState(folder)
        except (OSError, UsageError):
            continue  # in use, or not ours to judge
        try:
            if state.finished and now - state.finished >= KEEP_FINISHED_SECONDS:
                state.remove()
        finally:
            state.close()


def pending_elsewhere(home: Path, ours: Path, identity: str) -> list[str]:
    """The batches still running of other folders of the same job (another input): read
    without their lock, as a hint."""
    running: list[str] = []
    try:
        folders = [folder for folder in home.iterdir() if folder != ours]
    except OSError:
        return running
    for folder in folders:
        try:
            lines = (folder / "journal.jsonl").read_bytes().splitlines()
        except OSError:
            continue
        entries = []
        for line in lines:
            with contextlib.suppress(orjson.JSONDecodeError):
                entries.append(orjson.loads(line))
        if not any(isinstance(e, dict) and e.get("job") == identity for e in entries):
            continue
        created = {e["part"]: e["batch"] for e in entries if isinstance(e, dict) and "batch" in e}
        ended = {e["part"] for e in entries if isinstance(e, dict) and "ended" in e}
        running.extend(batch for part, batch in created.items() if part not in ended)
    return running


def state_home() -> Path:
    """``$XDG_STATE_HOME/agents/batches``, else under ``~/.local/state``."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(base) / "agents" / "batches"


def job_key(parts: dict[str, Any]) -> str:
    """The folder's name: a hash of what makes the job this job (see the caller)."""
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


@dataclass
class Part:
    number: int
    count: int
    size: int
    retries: int | None = None  # the part whose failed lines this one sends again
    file: str | None = None
    batch: str | None = None
    ended: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    output: str | None = None  # the server's output and error files
    errors: str | None = None
    emitted: bool = False
    forgotten: bool = False
    planned_at: float = 0.0


class BatchState:
    """A job's folder and journal, read back whole when it is opened."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.parts: dict[int, Part] = {}
        self.finished = 0.0  # when every result was written out (0: not yet)
        self.identity = ""  # the job on any input (see name_job)
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as error:
            raise AgentsError(
                f"{folder}: cannot make the batch job's folder: {error.strerror}",
                "set XDG_STATE_HOME to a folder you can write",
            ) from None
        self.journal = folder / "journal.jsonl"
        self._lock()
        self._read()

    def _lock(self) -> None:
        """Held while this process works on the job (the kernel lets go when it dies): two
        runs of one job at once would each submit what the other has not noted yet."""
        fd = os.open(self.folder / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise UsageError(
                f"another agents-map (PID {holder}) is running this batch job",
                "wait for it to end: it collects the same batches; run the command again "
                "afterwards if it was stopped",
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.lock_fd = fd

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.lock_fd)

    def _read(self) -> None:
        try:
            lines = self.journal.read_bytes().splitlines()
        except FileNotFoundError:
            return
        for line in lines:
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a line cut by a crash: its step is done again
            if not isinstance(entry, dict):
                continue
            if "finished" in entry:
                self.finished = float(entry["finished"])
                continue
            if "job" in entry:
                self.identity = str(entry["job"])
                continue
            number = entry.get("part")
            if not isinstance(number, int):
                continue
            if "count" in entry:
                self.parts[number] = Part(
                    number,
                    entry["count"],
                    entry.get("bytes", 0),
                    entry.get("from"),
                    planned_at=entry.get("at", 0.0),
                )
                continue
            part = self.parts.get(number)
            if part is None:
                continue
            if "file" in entry:
                part.file = entry["file"]
            if "batch" in entry:
                part.batch = entry["batch"]
            if "ended" in entry:
                part.ended = entry["ended"]
                part.counts = entry.get("counts") or {}
                part.output = entry.get("output")
                part.errors = entry.get("errors")
            if entry.get("emitted"):
                part.emitted = True
            if entry.get("forgotten"):
                part.forgotten = True

    def name_job(self, identity: str) -> None:
        """The job's identity, whatever its input, noted once (see pending_elsewhere)."""
        if self.identity != identity:
            self.note({"job": identity})
            self.identity = identity

    def note(self, entry: dict[str, Any]) -> None:
        """One journal line, synced before the next step: that step happened."""
        fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, orjson.dumps(entry) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)

    # files of a part --------------------------------------------------------------------------

    def path(self, number: int, kind: str) -> Path:
        """``part-N.KIND.jsonl``: records, requests, output, errors."""
        return self.folder / f"part-{number}.{kind}.jsonl"

    def records(self, number: int) -> Iterator[dict[str, Any]]:
        """A part's records as planned, in the order they were read."""
        with self.path(number, "records").open("rb") as lines:
            for line in lines:
                yield orjson.loads(line)

    def ids(self) -> set[str]:
        """The IDs of every record in a part that is not forgotten."""
        held: set[str] = set()
        for part in self.parts.values():
            if not part.forgotten and part.retries is None:
                held.update(str(entry["id"]) for entry in self.records(part.number))
        return held

    def next_number(self) -> int:
        return max(self.parts, default=0) + 1

    def drop_files(self, number: int, *kinds: str) -> None:
        for kind in kinds:
            with contextlib.suppress(FileNotFoundError):
                self.path(number, kind).unlink()

    def remove(self) -> None:
        """The whole folder: the job is over and nothing in it is needed again."""
        shutil.rmtree(self.folder, ignore_errors=True)

    # a part being written ---------------------------------------------------------------------


class PartWriter:
    """Writes a part's two files, record by record; :meth:`close` syncs them."""

    def __init__(self, state: BatchState, number: int) -> None:
        self.state = state
        self.number = number
        self.count = 0
        self.size = 0
        self.records = state.path(number, "records").open("wb")
        self.requests = state.path(number, "requests").open("wb")

    def add(self, entry: dict[str, Any], request: bytes) -> None:
        self.records.write(orjson.dumps(entry) + b"\n")
        self.requests.write(request)
        self.count += 1
        self.size += len(request)

    def close(self) -> None:
        for stream in (self.records, self.requests):
            stream.flush()
            os.fsync(stream.fileno())
            stream.close()

    def discard(self) -> None:
        for stream in (self.records, self.requests):
            stream.close()
        self.state.drop_files(self.number, "records", "requests")
