"""Exit statuses shared by every command, and the exceptions that map onto them.

Every expected failure is an :class:`AgentsError`; the CLI boundary (``agents.cli._run``) turns
it into one line on stderr and its exit status, never a traceback::

    AgentsError                 exit 1  the run stopped
    ├── UsageError              exit 2  bad flag or option value; nothing was done
    │   ├── SourceError         exit 2  input missing, unreadable, unknown format, bad query
    │   └── TargetError         exit 2  output cannot be opened or is not of its format
    └── DataError               exit 1  a bad row, line or document in the data itself
"""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    """The exit codes of agents-read, agents-map and agents-write (see agents(7))."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    PARTIAL = 3
    CAPPED = 4
    INTERRUPTED = 130
    BROKEN_PIPE = 141
    TERMINATED = 143

    @property
    def description(self) -> str:
        """What the status means, in one short line (the ``--help`` epilogs are made of these)."""
        return _DESCRIPTIONS[self]


_DESCRIPTIONS: dict[ExitStatus, str] = {
    ExitStatus.OK: "success",
    ExitStatus.FAILURE: "fatal error, the run stopped",
    ExitStatus.USAGE: "usage error, nothing was done",
    ExitStatus.PARTIAL: "finished, but some records failed or were skipped",
    ExitStatus.CAPPED: "stopped at a cap, resumable",
    ExitStatus.INTERRUPTED: "interrupted (Ctrl-C)",
    ExitStatus.BROKEN_PIPE: "stdout closed (e.g. by head)",
    ExitStatus.TERMINATED: "terminated (SIGTERM)",
}


class AgentsError(Exception):
    """An expected failure: reported as one line (plus an optional hint), never a traceback."""

    status = ExitStatus.FAILURE

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(AgentsError):
    """The command line or configuration is wrong; nothing was done."""

    status = ExitStatus.USAGE


class SourceError(UsageError):
    """The input cannot be opened or understood at all (missing file, unknown format, bad SQL)."""


class TargetError(UsageError):
    """The output cannot be opened, or an existing output is not of the expected format."""


class DataError(AgentsError):
    """A row, line or document of the data is malformed; names where it is."""

    def __init__(self, where: str, message: str, hint: str | None = None) -> None:
        super().__init__(f"{where}: {message}", hint)
        self.where = where
        self.reason = message
