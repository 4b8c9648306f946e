"""One writer per output: an exclusive lock on ``OUTPUT.agents-lock`` while agents-write runs.

``flock`` is released by the kernel when its holder dies, so a lock left by a killed process
never blocks. The file holds the holder's PID for the message a second writer gets; the holder
removes it when done. A writer that opened the file just before it was removed checks, once it
holds the lock, that the path still names the file it locked, and starts again if not.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass

from agents.errors import TargetError
from agents.formats._io import check_writable

LOCK_SUFFIX = ".agents-lock"


def lock_path(output: str) -> str:
    """The lock file of ``output``, named after the file itself (a symlink shares it)."""
    return os.path.realpath(output) + LOCK_SUFFIX


class WriterLock:
    """Held from :meth:`acquire` to :meth:`release`; ``wait`` queues behind another writer."""

    def __init__(self, output: str, *, wait: bool = False) -> None:
        self.output = output
        self.path = lock_path(output)
        self.wait = wait
        self.fd: int | None = None

    def acquire(self) -> None:
        check_writable(self.output)
        if os.path.exists(self.output) and not os.path.isfile(self.output):
            return  # a device or a FIFO (/dev/null): nothing to protect
        while self.fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise TargetError(
                    f"{self.output}: another {holder} is writing to it",
                    "wait for it to finish, or add --wait to start when it does",
                ) from None
            if not _still_named(fd, self.path):
                os.close(fd)  # its holder removed it as we opened it: lock the new one
                continue
            os.ftruncate(fd, 0)
            # The PID, and whether the output held anything when this writer began: an
            # agents-map --resume of the same pipeline then knows that what it finds there was
            # written by this run (parallel --pipe's later jobs), not by an earlier one.
            held = 1 if os.path.exists(self.output) and os.path.getsize(self.output) else 0
            os.write(fd, f"{os.getpid()}\n{held}\n".encode())
            self.fd = fd
        remove_stale_temporaries(os.path.realpath(self.output))

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self.fd)
        self.fd = None


def _holder(fd: int) -> str:
    """The lock's holder as the message names it: its program and PID, when known."""
    program, pid = "agents-write", ""
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode().split("\n")[0].strip()
        if text.isdigit():
            pid = f" (pid {text})"
            with open(f"/proc/{text}/cmdline", "rb") as stream:
                names = [os.path.basename(arg.decode()) for arg in stream.read().split(b"\0")]
            program = next((name for name in names if name.startswith("agents")), program)
    return program + pid


def _still_named(fd: int, path: str) -> bool:
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def remove_stale_temporaries(path: str) -> None:
    """Temporary files a killed writer left beside ``path`` (only its writer may call this: the
    lock guarantees that no rewrite is under way)."""
    folder, base = os.path.split(path)
    with contextlib.suppress(OSError):
        for name in os.listdir(folder or "."):
            if name.startswith(f".{base}.") and name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))


@dataclass(frozen=True)
class Writer:
    """The live agents-write holding an output's lock."""

    pid: int
    in_this_pipeline: bool
    started_on_empty: bool  # the output held nothing when it began


def current_writer(output: str) -> Writer | None:
    """The live agents-write holding ``output``'s lock, if there is one.

    A shell runs each pipeline in one process group (GNU parallel gives each of its jobs a
    group of its own, below the pipeline's): a writer whose group is neither this process's nor
    that of one of its ancestors belongs to another command. Linux only (``/proc``); elsewhere,
    or when unsure, None.
    """
    path = lock_path(output)
    try:
        with open(path) as stream:
            lines = stream.read().split()
        inode = os.stat(path).st_ino
    except OSError:
        return None
    if not lines or not lines[0].isdigit() or not _holds_flock(int(lines[0]), inode):
        return None
    pid = int(lines[0])
    try:
        group = os.getpgid(pid)
        ours = {os.getpgid(ancestor) for ancestor in _ancestors(os.getpid())}
    except OSError:
        return None
    return Writer(pid, group in ours, lines[1:2] == ["0"])


def writer_outside_this_pipeline(output: str) -> int | None:
    """The PID of a live agents-write holding ``output``'s lock that is not part of this
    pipeline, if there is one."""
    writer = current_writer(output)
    return writer.pid if writer is not None and not writer.in_this_pipeline else None


def _holds_flock(pid: int, inode: int) -> bool:
    try:
        with open("/proc/locks") as stream:
            lines = stream.read().splitlines()
    except OSError:
        return False
    for line in lines:
        fields = line.split()
        if (
            "FLOCK" in fields
            and len(fields) >= 6
            and fields[-4] == str(pid)
            and fields[-3].rsplit(":", 1)[-1] == str(inode)
        ):
            return True
    return False


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as stream:
            return int(stream.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _ancestors(pid: int) -> set[int]:
    found: set[int] = set()
    while pid > 1 and pid not in found:
        found.add(pid)
        parent = _parent(pid)
        if parent is None:
            break
        pid = parent
    return found
