"""The boundary between a command and the shell: streams, signals, and exit statuses.

Every exception is mapped to an exit status here and nowhere else: expected failures print one
line (and a hint), Ctrl-C gives 130, SIGTERM 143, a closed stdout 141 in silence, and anything
unexpected says "internal error" and how to see the traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import IO, Any, BinaryIO, NoReturn

import orjson

from agents import __version__
from agents.contract.codec import BIG_INTEGERS
from agents.errors import AgentsError, ExitStatus, Terminated, UsageError

TRACEBACK_VARIABLE = "AGENTS_TRACEBACK"


@dataclass
class Streams:
    """The standard streams a command uses; tests pass their own."""

    stdin: BinaryIO = field(default_factory=lambda: sys.stdin.buffer)
    stdout: BinaryIO = field(default_factory=lambda: sys.stdout.buffer)
    stderr: IO[str] = field(default_factory=lambda: sys.stderr)


class _ParserExit(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class Parser(argparse.ArgumentParser):
    """argparse that writes to the command's streams and raises instead of exiting."""

    def __init__(self, *args: Any, streams: Streams, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        self.streams = streams
        self.add_argument("--version", action="version", version=f"%(prog)s {__version__}")

    def _print_message(self, message: str, file: object = None) -> None:
        if message:
            self.streams.stdout.write(message.encode())
            self.streams.stdout.flush()

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise _ParserExit(status)

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, f"see '{self.prog} --help'")


class Reporter:
    """Messages for people, on stderr, prefixed with the command's name."""

    def __init__(self, prog: str, stderr: IO[str]) -> None:
        self.prog = prog
        self.stderr = stderr

    def error(self, message: str, hint: str | None = None) -> None:
        self._emit(f"{self.prog}: error: {message}", hint)

    def warning(self, message: str, hint: str | None = None) -> None:
        self._emit(f"{self.prog}: warning: {message}", hint)

    def info(self, message: str) -> None:
        self._emit(f"{self.prog}: {message}", None)

    def say(self, line: str) -> None:
        """A line of a report (summary, estimate), without the program's name."""
        self._emit(line, None)

    def _emit(self, line: str, hint: str | None) -> None:
        try:
            self.stderr.write(line + "\n")
            if hint:
                self.stderr.write(f"  hint: {hint}\n")
            self.stderr.flush()
        except (OSError, ValueError):
            pass


@contextmanager
def handling(handler: Callable[[int, object], None], *signums: int) -> Iterator[None]:
    """``handler`` for ``signums`` for the duration, the previous handlers restored after.

    Outside the main thread (in-process tests) signals cannot be set and are left alone.
    """
    try:
        previous = {signum: signal.signal(signum, handler) for signum in signums}
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        for signum, earlier in previous.items():
            signal.signal(signum, earlier)


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


def sigterm_raises() -> AbstractContextManager[None]:
    """Turn SIGTERM into :class:`Terminated` for the duration, so files are cleaned up."""
    return handling(_raise_terminated, signal.SIGTERM)


def _silence_stdout(stdout: BinaryIO) -> None:
    """After a broken pipe, point stdout at /dev/null so the final flush cannot fail again."""
    try:
        fd = stdout.fileno()
    except (OSError, ValueError, AttributeError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def run(prog: str, body: Callable[[Reporter], int], streams: Streams) -> int:
    """Run a command's body and map whatever happens to an exit status."""
    reporter = Reporter(prog, streams.stderr)
    kept = BIG_INTEGERS.kept
    status = _outcome(body, reporter, streams)
    if BIG_INTEGERS.kept > kept:
        count = BIG_INTEGERS.kept - kept
        reporter.warning(
            f"{count:,} {'integer' if count == 1 else 'integers'} beyond 64 bits kept exactly, "
            "as decimal text",
            "see 'man agents' (FORMATS)",
        )
    return status


def _outcome(body: Callable[[Reporter], int], reporter: Reporter, streams: Streams) -> int:
    try:
        with sigterm_raises():
            return body(reporter)
    except _ParserExit as done:
        return done.status
    except AgentsError as error:
        reporter.error(error.message, error.hint)
        return int(error.status)
    except BrokenPipeError:
        _silence_stdout(streams.stdout)
        return int(ExitStatus.BROKEN_PIPE)
    except KeyboardInterrupt:
        reporter.info("interrupted")
        return int(ExitStatus.INTERRUPTED)
    except Terminated:
        reporter.info("terminated")
        return int(ExitStatus.TERMINATED)
    except OSError as error:
        if error.errno is not None and error.strerror:
            where = f"{error.filename}: " if error.filename else ""
            reporter.error(f"{where}{error.strerror}")
            return int(ExitStatus.FAILURE)
        return _internal(reporter, error)
    except Exception as error:
        return _internal(reporter, error)


def _internal(reporter: Reporter, error: BaseException) -> int:
    if os.environ.get(TRACEBACK_VARIABLE):
        raise error
    reporter.error(
        f"internal error: {type(error).__name__}: {error}",
        f"this is a bug; run again with {TRACEBACK_VARIABLE}=1 to see the traceback and report it",
    )
    return int(ExitStatus.FAILURE)


def exit_with(status: int) -> NoReturn:
    """Leave the process with ``status``; a stdout that is gone by now is not an error."""
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        _silence_stdout(sys.stdout.buffer)
    raise SystemExit(status)


def exit_status_epilog() -> str:
    """The ``--help`` epilog of every command: the exit statuses of agents(7), one a line."""
    lines = [f"  {int(status):<4} {status.description}" for status in ExitStatus]
    return "\n".join(["exit status:", *lines]) + "\n"


EXIT_STATUS_EPILOG = exit_status_epilog()


def save_stats(path: str, document: dict[str, Any], reporter: Reporter) -> bool:
    """--stats PATH written; False (said on stderr) when it cannot be."""
    try:
        with open(path, "wb") as stream:
            stream.write(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
    except OSError as error:
        reporter.error(f"--stats {path}: cannot write: {error.strerror}")
        return False
    return True
