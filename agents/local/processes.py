"""What the system says about a process: whether it runs, when it started, what it runs, which
processes descend from it.

A PID alone names a process only while it lives: once it has exited the number may be given to
another one. Its start time (``/proc/PID/stat``, in clock ticks after boot) together with the PID
names one process for good, which is how a state file written long ago tells the server it started
from an unrelated process that got the same number. Without ``/proc`` (not Linux) start times and
descendants are unknown, and the callers fall back to what ``kill(pid, 0)`` says.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")


def alive(pid: int) -> bool:
    """Whether a process with this PID exists (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (which may hold spaces and
    parentheses): the process state first, then the parent's PID, ..."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except (OSError, ValueError):
        return None
    return text.rpartition(")")[2].split()


def start_time(pid: int) -> int | None:
    """When the process started, in clock ticks after boot; None when unknown (no such process,
    or no /proc)."""
    fields = _stat(pid)
    if fields is None or len(fields) < 20:
        return None
    return int(fields[19])  # field 22 of proc(5); the state is field 3


def running(pid: int, started: int | None) -> bool:
    """Whether the process that started at ``started`` still runs as ``pid`` (not a zombie).
    With no start time to compare, whether any process has that PID."""
    if started is None:
        return alive(pid)
    fields = _stat(pid)
    if fields is None:
        return not PROC.joinpath("self", "stat").exists() and alive(pid)
    return fields[0] != "Z" and len(fields) >= 20 and int(fields[19]) == started


def command_line(pid: int) -> list[str] | None:
    """The process's arguments; None when unknown."""
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def descendants(pid: int) -> list[int]:
    """The processes that descend from ``pid`` (children, their children, ...); [] without /proc."""
    children: dict[int, list[int]] = {}
    try:
        entries = list(PROC.iterdir())
    except OSError:
        return []
    for entry in entries:
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields is not None and len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    parents = [pid]
    while parents:
        below = [child for parent in parents for child in children.get(parent, [])]
        found += below
        parents = below
    return found
