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

from agents.errors import TargetError
from agents.formats._io import check_writable

LOCK_SUFFIX = ".agents-lock"


def lock_path(output: str) -> str:
    return output + LOCK_SUFFIX


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
                    f"{self.output}: another agents-write{holder} is writing to it",
                    "wait for it to finish, or add --wait to start when it does",
                ) from None
            if not _still_named(fd, self.path):
                os.close(fd)  # its holder removed it as we opened it: lock the new one
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self.fd)
        self.fd = None


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode().strip()
        if text.isdigit():
            return f" (pid {text})"
    return ""


def _still_named(fd: int, path: str) -> bool:
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)
