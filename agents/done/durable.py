"""Every write, fsync and rename of a durable output goes through :data:`DISK`.

That is the seam where the tests inject a full disk (fail the nth write, fsync or rename with
ENOSPC). :func:`replace_whole` is the one way a durable output is rewritten whole: a temporary
file beside it, fsynced, renamed over it, and the folder fsynced, so the live file is never
truncated and a crash leaves the old file or the new one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import BinaryIO, cast

from agents.formats._io import fsync_folder


class Disk:
    """The file operations of durable outputs (tests substitute a failing one)."""

    def open(self, path: str, mode: str) -> BinaryIO:
        return cast(BinaryIO, open(path, mode))

    def fsync(self, stream: BinaryIO) -> None:
        stream.flush()
        os.fsync(stream.fileno())

    def replace(self, source: str, target: str) -> None:
        os.replace(source, target)


DISK = Disk()


@contextlib.contextmanager
def using(disk: Disk) -> Iterator[Disk]:
    """Route durable writes through ``disk`` for the duration (tests)."""
    global DISK
    previous, DISK = DISK, disk
    try:
        yield disk
    finally:
        DISK = previous


def replace_whole(path: str, fill: Callable[[BinaryIO], None]) -> None:
    """Rewrite ``path`` with what ``fill`` writes, atomically and durably."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        with DISK.open(temp, "wb") as stream:
            fill(stream)
            DISK.fsync(stream)
        with contextlib.suppress(OSError):
            os.chmod(temp, os.stat(path).st_mode & 0o7777)
        DISK.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    fsync_folder(path)
