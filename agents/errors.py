"""Exit statuses shared by every command, and the one exception tree of the package.

Every expected failure is an :class:`AgentsError`; the CLI boundary (``agents.cli._run``) turns
it into one line on stderr and its exit status, never a traceback. The others are caught inside
the package, and the middle column says what becomes of them: ``exit N`` the command stops with
that status, ``record`` the record becomes an error record and the run goes on::

    Exception
    ├── AgentsError           exit 1    the run stopped
    │   ├── UsageError        exit 2    bad flag or option value; nothing was done
    │   │   ├── SourceError   exit 2    input missing, unreadable, unknown format, bad query
    │   │   └── TargetError   exit 2    output cannot be opened or is not of its format
    │   └── DataError         exit 1    a bad row, line or document in the data itself
    ├── ValueError
    │   └── InvalidID                   not an ID (null, a boolean, an object, an array): readers
    │                                   raise a DataError; scans of done IDs pass over it
    ├── CallError                       a failed request to the model (agents-map)
    │   ├── Retryable         retried   429, 408, 409, 5xx, timeouts, dropped connections, cut
    │   │                               bodies; once --max-retries are spent, ``record``
    │   ├── Fatal             exit 1    401/403 (the key), 404 (the model or the URL), a server
    │   │                               that cannot be reached before anything succeeded
    │   └── RecordFailed      record    400, 413, 422: this record's request is wrong
    ├── MissingFields         record    the record lacks a field the prompt names
    ├── Unusable              re-asked  an answer that cannot be used; ``record`` once
    │                                   --max-reasks are spent or asking again cannot help
    ├── CapReached            exit 4    --max-cost or --max-errors: sending stops; rerun to resume
    └── CircuitOpen           exit 1    many records in a row failed the same way
    BaseException
    └── Terminated            exit 143  SIGTERM arrived; cleanup runs before the exit
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
        #: Records read whole before the bad one in the same batch, so that a writer can keep
        #: them ("every record before it is kept") although the batch stopped.
        self.records_before: list[dict[str, object]] = []


class InvalidID(ValueError):
    """A value that cannot serve as an ID (null, a boolean, an object or an array)."""


# agents-map ---------------------------------------------------------------------------------------


class CallError(Exception):
    """A failed call: ``error_type`` names it in error records and statistics."""

    def __init__(
        self,
        error_type: str,
        message: str,
        http_status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.http_status = http_status
        self.retry_after = retry_after
        self.attempts = 1  # set by the retry loop to the number of calls it made
        #: A 429 whose x-ratelimit-remaining-* header says the budget is spent: congestion.
        self.exhausted = False
        #: The epoch of the window of requests in flight it failed in (None: not sent into
        #: one): once that window is cut, the failure was the window's, not the record's (its
        #: attempt is given back, see agents.map.record).
        self.window_epoch: int | None = None
        #: The window itself (several endpoints: each has its own).
        self.window: object | None = None
        #: No connection was made: the request reached no server, so nothing was paid.
        self.not_sent = False


class Retryable(CallError):
    """Worth trying again after a wait."""


class Fatal(CallError):
    """Nothing will work until the configuration changes; the run stops."""


class RecordFailed(CallError):
    """This record's request cannot succeed as it is."""


class MissingFields(Exception):
    """The record lacks fields the template names; ``names`` lists every one of them."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(", ".join(names))
        self.names = names


class Unusable(Exception):
    """An answer that cannot be used: ``error_type`` says why, ``reask`` whether asking again
    (with the problem explained) may help."""

    def __init__(self, error_type: str, message: str, reask: bool) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.reask = reask
        self.answer: str | None = None  # the model's answer, kept in the error record


class CapReached(Exception):
    """A cap stops the run: nothing more is sent; what was written stays; rerun to resume.
    ``output``: the record's output and whether it succeeded, when it has one all the same (an
    earlier model's paid failure, whose fallback the cap left no room for)."""

    output: tuple[dict[str, object], bool] | None = None


class InputChanged(UsageError):
    """--resume: a sampled record's content is not what it was when the output was started,
    so its ID now names another record. Before anything is sent this is a usage error (exit 2);
    found later, it stops the run as a failure (exit 1)."""


class NotSent(Exception):
    """The run stopped (a signal, a cap) while this record's request was still waiting for a
    slot, a rate budget or a backoff: it is not sent, and the record gets no output, so the
    next run sends it."""


class CircuitOpen(Exception):
    """Many records in a row failed the same way: the run stops instead of burning the input."""


# The process --------------------------------------------------------------------------------------


class Terminated(BaseException):
    """Raised in the main thread when SIGTERM arrives, so cleanup runs before exit 143.

    A BaseException, so that no ``except Exception`` on the way swallows it.
    """
