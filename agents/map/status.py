"""--status FILE (or DIR/): a running job's figures, for ``agents watch`` and for scripts.

A small JSON document, rewritten about once a second and once at the end, always whole: it is
written to a temporary file beside it and renamed over it, so a reader sees the old document
or the new one, never part of one. With a folder (``--status DIR/``), each process writes its
own file in it (``HOST-PID.json``), so the processes of one job under ``parallel --pipe`` or
on several hosts share a folder.

The document::

    {"version": 1, "job": "3f2a…", "model": "…", "state": "running" | "finished",
     "process": {"host", "pid", "command", "started"}, "output": "/abs/out.jsonl" | null,
     "updated": 1765000000.5, "interval": 1.0,
     "records": {"done", "succeeded", "failed", "total"}, "rate_per_minute", "eta_seconds",
     "errors": {type: count}, "last_error", "requests", "retries", "tokens": {"input",
     "output", "total"}, "cost_usd", "limits": {"rpm", "tpm", "concurrency", "rate_group"},
     "in_flight", "outcome": null | {"exit_status", "meaning", "stopped"}}

``job`` is a hash of the job's fingerprint (prompt, model, format…: what resume compares), so
that the processes of one job are seen together. ``updated`` is seconds since the epoch on the
writer's clock: a document not updated for a while belongs to a process that is gone (kill -9,
a lost host), which ``agents watch`` shows as stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agents.errors import ExitStatus
from agents.formats._io import standard_stream_at

#: How often the document is rewritten, in seconds.
INTERVAL = 1.0
VERSION = 1

Figures = Callable[[], dict[str, Any]]


def job_id(fingerprint: dict[str, Any]) -> str:
    """The job's name in status documents: the same for every process of one job."""
    text = json.dumps(fingerprint, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def process_of(command: str) -> dict[str, Any]:
    """This process, as status documents and notifications name it."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "command": command,
        "started": round(STARTED, 3),
    }


#: When this process started (near enough: when this module was imported).
STARTED = time.time()


def status_path(spelling: str) -> Path:
    """The file to write: ``spelling``, or ``HOST-PID.json`` in it when it names a folder
    (ends with ``/`` or is one)."""
    path = Path(spelling)
    if spelling.endswith(os.sep) or path.is_dir():
        return path / f"{socket.gethostname()}-{os.getpid()}.json"
    return path


#: A status document is a few kilobytes: a file much larger is not one.
LARGEST = 1 << 20


def read_document(path: str | Path) -> dict[str, Any] | None:
    """The status document at ``path``, or None when it is anything else (not a regular file,
    too large, not JSON, another program's JSON): never blocks (a FIFO) or reads without end."""
    try:
        with open(path, "rb", opener=_nonblocking) as stream:
            info = os.fstat(stream.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_size > LARGEST:
                return None
            document = json.loads(stream.read(LARGEST + 1))
    except (OSError, ValueError):
        return None
    if (
        not isinstance(document, dict)
        or document.get("version") != VERSION
        or not isinstance(document.get("process"), dict)
    ):
        return None
    return document


def _nonblocking(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NONBLOCK)


def check_target(
    flag: str,
    path: str | Path,
    others: dict[str, str | None],
    ours: Callable[[Path], bool],
    hint: str,
) -> None:
    """A file a run writes whole (--status, --stats) must destroy nothing: not another
    option's file (``others``: its name -> its path), not the file a standard stream goes to
    (the shell has emptied it already, so it looks new), not anything but what ``ours`` says
    may be written over."""
    from agents.errors import UsageError

    for name, other in others.items():
        if other and os.path.realpath(other) == os.path.realpath(path):
            raise UsageError(f"{flag} {path}: {name} names the same file", hint)
    stream = standard_stream_at(path)
    if stream is not None:
        raise UsageError(f"{flag} {path}: it is the file {stream} goes to", hint)
    if os.path.lexists(path) and not ours(Path(path)):
        raise UsageError(f"{flag} {path}: it holds something else, which would be lost", hint)


def _written_by_another(path: Path) -> bool:
    """Whether the document at ``path`` is another live process's on this host (processes
    that share one file overwrite each other's figures)."""
    document = read_document(path)
    if document is None or document.get("state") != "running":
        return False
    process = document["process"]
    return process.get("pid") != os.getpid() and runs_here(process) is True


def runs_here(process: dict[str, Any]) -> bool | None:
    """Whether the process a document names (its ``process``) still runs: None when it is on
    another host, or names no PID, where this host cannot tell."""
    pid = process.get("pid")
    if process.get("host") != socket.gethostname() or not isinstance(pid, int):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # (another user's: it runs)
    return True


def _replaceable(path: Path) -> bool:
    """Whether ``path`` may be written over: an empty file, or a status document."""
    try:
        info = os.stat(path)
    except OSError:
        return False
    if stat.S_ISREG(info.st_mode) and info.st_size == 0:
        return True
    return read_document(path) is not None


def _starting() -> dict[str, Any]:
    """The figures before the run has any (its first document, written at the start)."""
    return {"records": {"done": 0, "succeeded": 0, "failed": 0, "total": None}}


class StatusFile:
    """The document of one process (see the module's docstring)."""

    def __init__(
        self, spelling: str, job: str, model: str, command: str, output: str | None = None
    ) -> None:
        self.path = status_path(spelling)
        self.base: dict[str, Any] = {
            "version": VERSION,
            "job": job,
            "model": model,
            "process": process_of(command),
            # the output it resumes (--resume, agents process's work file): a later process
            # of the job with the same one is the same work run again
            "output": os.path.abspath(output) if output else None,
            "interval": INTERVAL,
        }
        self.figures: Figures = _starting
        self.failed: str | None = None  # why it could not be written (said once)
        self.checked = False  # written once: later failures are warned of, not refused
        self.warn: Callable[[str], None] = lambda message: None
        self.finished = False

    def check(self, others: dict[str, str | None]) -> None:
        """Before anything is sent: the document can be written where it is asked for, and
        writing it destroys nothing. A path that holds anything but a status document (the
        input, the output, any other file, a device) or that another option names
        (``others``: flag -> path) is refused, as is a folder that does not exist."""
        from agents.errors import UsageError

        path, folder = self.path, self.path.parent
        hint = "give a new file, or a folder ending in / for one file per process"
        if not folder.is_dir():
            raise UsageError(
                f"--status {path}: the folder {folder} does not exist", f"mkdir -p {folder}"
            )
        if os.path.lexists(path) and _written_by_another(path):
            raise UsageError(
                f"--status {path}: another running process writes it",
                "give the processes of a job a folder: --status DIR/ (one file each)",
            )
        check_target("--status", path, others, _replaceable, hint)
        self.write()
        if self.failed:
            raise UsageError(self.failed, "give a path that can be written")

    def write(self, outcome: dict[str, Any] | None = None) -> None:
        document = {
            **self.base,
            "state": "finished" if outcome is not None else "running",
            "updated": round(time.time(), 3),
            **self.figures(),
            "outcome": outcome,
        }
        if outcome is not None:
            document.update(eta_seconds=None, in_flight=0, generating=None)  # (nothing left)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            temporary.write_text(json.dumps(document, indent=1) + "\n")
            os.replace(temporary, self.path)
        except OSError as error:
            with contextlib.suppress(OSError):
                temporary.unlink()
            if self.failed is None and self.checked:
                self.warn(f"--status {self.path}: cannot write: {error.strerror} (the run goes on)")
            self.failed = f"--status {self.path}: cannot write: {error.strerror}"
            return
        self.checked = True
        if self.failed is not None:
            self.failed = None
            self.warn(f"--status {self.path}: written again")

    async def run(self) -> None:
        while True:
            await asyncio.sleep(INTERVAL)
            self.write()

    def finish(self, status: int, stopped: str | None = None) -> None:
        """The last document: the run's outcome and its exit status."""
        if self.finished:
            return
        self.finished = True
        try:
            meaning = ExitStatus(status).description
        except ValueError:
            meaning = "unknown"
        self.write({"exit_status": status, "meaning": meaning, "stopped": stopped})


__all__ = [
    "INTERVAL",
    "StatusFile",
    "check_target",
    "job_id",
    "read_document",
    "runs_here",
    "status_path",
]
