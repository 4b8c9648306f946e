"""The sliding window: ``-j N`` records in flight, results written as they complete.

Records are read only when a slot is free, so a slow API holds back the input (backpressure).
Results are written one whole line at a time, in completion order or, with keep-order, in input
order through a bounded buffer. A fatal error, a tripped circuit breaker, a closed stdout or a
signal stops new requests; what is in flight is awaited (for a bounded time) or cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from agents.contract.codec import encode
from agents.contract.error_record import error_record
from agents.contract.ids import ID_KEY, Record, content_id
from agents.errors import (
    CapReached,
    CircuitOpen,
    DataError,
    Fatal,
    InputChanged,
    NotSent,
    UsageError,
)
from agents.formats._io import LineSplitter
from agents.formats._options import BadRowHandler
from agents.formats.jsonl import parse_lines, whole_lines
from agents.map.caps import ErrorCap

#: Processes one record: (the output record, whether it succeeded).
Process = Callable[[Record], Awaitable[tuple[Record, bool]]]

#: What answers one record, once its turn comes: (its output record, whether it succeeded).
Work = Callable[[], Awaitable[tuple[Record, bool]]]

#: Looks at a batch of records as it is read: for each, its output at once (answered from a
#: cache: written without a task or a slot) or the work that answers it.
Prepare = Callable[[list[Record]], list[Record | Work]]


@dataclass
class CircuitBreaker:
    """Trips after ``before_success`` failures of one type in a row while nothing has succeeded
    yet, or ``after_success`` once something has."""

    before_success: int = 5
    after_success: int = 25
    streak_type: str | None = None
    streak: int = 0
    any_success: bool = False

    def record(self, output: Record, succeeded: bool) -> None:
        if succeeded:
            self.any_success, self.streak, self.streak_type = True, 0, None
            return
        error_type = str(output.get("error_type"))
        if error_type == self.streak_type:
            self.streak += 1
        else:
            self.streak_type, self.streak = error_type, 1
        limit = self.after_success if self.any_success else self.before_success
        if self.streak >= limit:
            raise CircuitOpen(
                f"{self.streak} records in a row failed with {error_type}: {output.get('error')}"
            )


# Reading ------------------------------------------------------------------------------------


async def read_lines(stream: BinaryIO) -> AsyncIterator[list[bytes]]:
    """Lists of whole lines from ``stream``, without blocking the event loop on a pipe."""
    loop = asyncio.get_running_loop()
    try:
        mode = os.fstat(stream.fileno()).st_mode
    except (OSError, ValueError, AttributeError):
        mode = 0
    if stat.S_ISCHR(mode):  # a terminal, /dev/null: the event loop cannot watch these
        read = getattr(stream, "read1", stream.read)
        splitter = LineSplitter()
        while chunk := await asyncio.to_thread(read, 1 << 16):
            if lines := splitter.feed(chunk):
                yield lines
        if rest := splitter.finish():
            yield rest
        return
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        reader = asyncio.StreamReader(limit=1 << 20)  # pauses the pipe beyond 2 MB: flat memory
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(os.dup(stream.fileno()), "rb")
        )
        try:
            splitter = LineSplitter()
            while chunk := await reader.read(1 << 16):
                if lines := splitter.feed(chunk):
                    yield lines
            if rest := splitter.finish():
                yield rest
        finally:
            transport.close()
        return
    for lines in whole_lines(stream):  # a regular file: reads never wait long
        yield lines


#: Bad lines before any record that mean the input is not JSON Lines at all.
NOT_JSON_LINES_AFTER = 5


class JsonLinesGate:
    """Input that is not JSON Lines at all (a CSV piped straight in) is refused before anything
    is sent, instead of one warning a line: the first bad lines are held until a record shows
    the input is JSON Lines after all (then they are reported as usual), or until there are
    too many of them."""

    def __init__(self, bad: BadRowHandler) -> None:
        self.report = bad
        self.held: list[DataError] = []
        self.records = 0

    def bad(self, error: DataError) -> None:
        if self.records:
            self.report(error)
            return
        self.held.append(error)
        if len(self.held) >= NOT_JSON_LINES_AFTER:
            first = self.held[0]
            raise UsageError(
                f"the input is not JSON Lines: its first {len(self.held)} lines are not JSON "
                f"objects ({first.message})",
                "read CSV, JSON, text or SQLite through agents-read first: "
                "agents-read FILE | agents-map ...",
            )

    def saw(self, records: int, ended: bool = False) -> None:
        self.records += records
        if self.held and (self.records or ended):
            held, self.held = self.held, []
            for error in held:
                self.report(error)


@dataclass
class IdAssigner:
    """Gives records without an ID one from their content, counting them and any collisions."""

    hashed: int = 0
    duplicates: int = 0
    seen: set[str] = field(default_factory=set)

    def ensure(self, record: Record) -> Record:
        if ID_KEY in record:
            return record
        record_id = content_id(record)
        self.hashed += 1
        if record_id in self.seen:
            self.duplicates += 1
        self.seen.add(record_id)
        return {ID_KEY: record_id, **record}


# Running ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """How a run ended, for the exit status and the closing message."""

    written: int = 0
    failed: int = 0
    fatal: str | None = None
    broken_pipe: bool = False
    signal: int | None = None
    in_flight_lost: int = 0
    not_sent: int = 0  # records whose request was still waiting when the run stopped
    errors: dict[str, int] = field(default_factory=dict)  # error records written, by type
    capped: str | None = None  # a --max-cost or --max-errors cap stopped the run
    duplicates: int = 0  # records skipped under --resume: their ID came earlier in the input
    #: Why the run stopped early, for --stats: fatal, circuit, input_changed, max_cost,
    #: max_errors, signal or broken_pipe (None: it read its whole input).
    stopped: str | None = None


class Scheduler:
    def __init__(
        self,
        process: Process,
        out: BinaryIO,
        *,
        jobs: int,
        keep_order: bool = False,
        errors_out: BinaryIO | None = None,
        breaker: CircuitBreaker | None = None,
        repeats: Callable[[Record], bool] = lambda output: False,
        grace: float = 30.0,
        bad: BadRowHandler,
        limit: int | None = None,
        on_result: Callable[[Record, bool], None] | None = None,
        skip: Callable[[Record], bool] | None = None,
        error_cap: ErrorCap | None = None,
        stopping: asyncio.Event | None = None,
        prepare: Prepare | None = None,
    ) -> None:
        self.process = process
        self.prepare = prepare
        self.unflushed = False  # results written at once, not yet flushed
        self.out = out
        self.errors_out = errors_out
        self.jobs = jobs
        self.keep_order = keep_order
        self.breaker = breaker or CircuitBreaker()
        self.repeats = repeats
        self.grace = grace
        self.bad = bad
        self.limit = limit
        self.on_result = on_result
        self.skip = skip
        self.error_cap = error_cap
        self.ids = IdAssigner()
        self.outcome = Outcome()
        # Shared with whatever sends requests, so that a stop reaches requests still waiting.
        self.stopping = stopping or asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        self.slots = asyncio.Semaphore(jobs)
        # keep-order: results wait here until every earlier record is written
        self.order_slots = asyncio.Semaphore(max(4 * jobs, 16))
        self.ready: dict[int, tuple[Record, bool]] = {}
        self.next_to_write = 0

    async def run(self, stdin: BinaryIO) -> Outcome:
        loop = asyncio.get_running_loop()
        self._install_signals(loop)
        watched = self._watch_reader(loop)
        feeder = asyncio.create_task(self._feed(stdin))
        stopped = asyncio.create_task(self.stopping.wait())
        await asyncio.wait({feeder, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not feeder.done():
            feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
        if self.stopping.is_set() and (
            self.outcome.signal is not None
            or (self.outcome.capped and not self.outcome.fatal)
            or self.outcome.stopped == "input_changed"
        ):
            await self._drain_within_grace()
        elif self.stopping.is_set():
            self._cancel_all()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        for sequence in sorted(self.ready):  # keep-order: results behind a dropped record
            self._emit(*self.ready.pop(sequence))
        self._flush()
        stopped.cancel()
        self._remove_signals(loop)
        if watched is not None:
            loop.remove_reader(watched)
        if isinstance(feeder.exception() if not feeder.cancelled() else None, BaseException):
            raise feeder.exception()  # type: ignore[misc]
        return self.outcome

    async def _feed(self, stdin: BinaryIO) -> None:
        number = 1
        sequence = 0
        gate = JsonLinesGate(self.bad)
        async for lines in read_lines(stdin):
            batch = parse_lines(lines, "<stdin>", number, gate.bad)
            gate.saw(len(batch))
            try:
                # The whole batch is looked at before any of it is sent: --resume checks the
                # first records against the output's samples before the first request.
                to_send = self._to_send(batch, sequence)
            except InputChanged as changed:
                if not sequence:
                    raise  # nothing was sent: a usage error, exit 2
                # Something was sent already: a failure (exit 1); what is in flight is kept.
                hint = f"; {changed.hint}" if changed.hint else ""
                self._stop_fatal(changed.message + hint, "input_changed")
                return
            works = (
                self.prepare(to_send)
                if self.prepare is not None
                else [functools.partial(self.process, record) for record in to_send]
            )
            for record, work in zip(to_send, works, strict=True):
                if isinstance(work, dict):  # answered already: no task, no slot
                    if self.keep_order:
                        if self.order_slots.locked():
                            self._flush()  # what waits behind earlier records is written
                        await self.order_slots.acquire()
                    if self.stopping.is_set():
                        if self.keep_order:
                            self.order_slots.release()
                        break
                    self._finish(sequence, work, True)
                    sequence += 1
                    continue
                self._flush()  # before a wait: results answered at once are not held back
                await self.slots.acquire()
                if self.keep_order:
                    await self.order_slots.acquire()
                if self.stopping.is_set():
                    self.slots.release()
                    if self.keep_order:
                        self.order_slots.release()
                    break
                task = asyncio.create_task(self._one(sequence, record, work))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
                sequence += 1
            self._flush()
            if self.stopping.is_set():
                return
            number += len(lines)
            if self.limit is not None and sequence >= self.limit:
                break
        gate.saw(0, ended=True)
        while self.tasks:  # asyncio.wait, unlike gather, leaves them running if we are cancelled
            await asyncio.wait(set(self.tasks))

    def _to_send(self, batch: list[Record], sent: int) -> list[Record]:
        """The records of ``batch`` to send (with IDs), within --limit, skipping what
        --resume finds done."""
        out: list[Record] = []
        for parsed in batch:
            if self.limit is not None and sent + len(out) >= self.limit:
                break
            record = self.ids.ensure(parsed)
            if self.skip is None or not self.skip(record):
                out.append(record)
        return out

    async def _one(self, sequence: int, record: Record, work: Work) -> None:
        try:
            output, succeeded = await work()
        except Fatal as error:
            self._stop_fatal(error.message, "fatal")
            return
        except CapReached as error:
            self._stop_capped(str(error), "max_cost")
            if error.output is None:
                return
            output, succeeded = error.output  # (paid for: written all the same)
        except NotSent:
            self.outcome.not_sent += 1
            return
        except asyncio.CancelledError:
            self.outcome.in_flight_lost += 1
            raise
        except Exception as error:  # a bug must not lose the record silently
            output = error_record(
                record.get(ID_KEY), f"internal error: {error!r}", "internal_error", 1, record
            )
            succeeded = False
        finally:
            self.slots.release()
        self._finish(sequence, output, succeeded)
        self._flush()

    def _finish(self, sequence: int, output: Record, succeeded: bool) -> None:
        """A record's output: counted by the circuit breaker and the error cap, and written
        (in input order with keep-order); flushed by the caller."""
        try:
            if succeeded or not self.repeats(output):
                self.breaker.record(output, succeeded)
        except CircuitOpen as error:
            self._write(sequence, output, succeeded)
            self._stop_fatal(str(error), "circuit")
            return
        self._write(sequence, output, succeeded)
        if self.error_cap is not None and not succeeded:
            try:
                self.error_cap.check(
                    self.outcome.failed, self.outcome.failed + self.outcome.written
                )
            except CapReached as error:
                self._stop_capped(str(error), "max_errors")

    def _stopped(self, reason: str) -> None:
        """Stop sending, remembering the first reason (for --stats)."""
        if self.outcome.stopped is None:
            self.outcome.stopped = reason
        self.stopping.set()

    def _stop_capped(self, message: str, reason: str) -> None:
        """Stop sending; requests in flight finish and are written (they are paid for)."""
        if self.outcome.capped is None:
            self.outcome.capped = message
        self._stopped(reason)

    def _write(self, sequence: int, output: Record, succeeded: bool) -> None:
        if not self.keep_order:
            self._emit(output, succeeded)
            return
        self.ready[sequence] = (output, succeeded)
        while self.next_to_write in self.ready:
            self._emit(*self.ready.pop(self.next_to_write))
            self.next_to_write += 1
            self.order_slots.release()

    def _emit(self, output: Record, succeeded: bool) -> None:
        if self.outcome.broken_pipe:
            return
        target = self.out if succeeded or self.errors_out is None else self.errors_out
        try:
            target.write(encode(output))
        except BrokenPipeError:
            self._pipe_broke()
            return
        self.unflushed = True
        if succeeded:
            self.outcome.written += 1
        else:
            self.outcome.failed += 1
            kind = str(output.get("error_type"))
            self.outcome.errors[kind] = self.outcome.errors.get(kind, 0) + 1
        if self.on_result is not None:
            self.on_result(output, succeeded)

    def _flush(self) -> None:
        """Flush what was written: after each answer that took a request, and after a run of
        records answered at once (a write per record would cost more than the record)."""
        if not self.unflushed or self.outcome.broken_pipe:
            return
        self.unflushed = False
        try:
            self.out.flush()
            if self.errors_out is not None:
                self.errors_out.flush()
        except BrokenPipeError:
            self._pipe_broke()

    def _pipe_broke(self) -> None:
        self.outcome.broken_pipe = True
        self._stopped("broken_pipe")

    def _stop_fatal(self, message: str, reason: str) -> None:
        if self.outcome.fatal is None:
            self.outcome.fatal = message
            # A failure decides the exit status (1) over a cap met before it, so --stats names
            # it too; a signal or a closed pipe stays the reason.
            if self.outcome.stopped in ("max_cost", "max_errors"):
                self.outcome.stopped = reason
        self._stopped(reason)

    def _cancel_all(self) -> None:
        for task in list(self.tasks):
            task.cancel()

    async def _drain_within_grace(self) -> None:
        if not self.tasks:
            return
        _, pending = await asyncio.wait(set(self.tasks), timeout=self.grace)
        for task in pending:
            task.cancel()

    # Signals --------------------------------------------------------------------------------

    def _watch_reader(self, loop: asyncio.AbstractEventLoop) -> int | None:
        """When stdout is a pipe, notice at once that its reader is gone (the kernel reports an
        error on the pipe's write end), rather than at the next write: each request sent in
        between would be paid for and lost."""
        try:
            fd = self.out.fileno()
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                return None
            blocking = os.get_blocking(fd)
            loop.add_reader(fd, self._reader_gone, loop, fd)
            # uvloop makes the pipe non-blocking to watch it, and the flag belongs to the pipe,
            # not to the loop: results written to a full pipe would then be cut short (at
            # 64 KiB, silently). Writes must wait for the reader instead.
            if blocking and not os.get_blocking(fd):
                os.set_blocking(fd, True)
        except (OSError, ValueError, AttributeError, NotImplementedError):
            return None
        return fd

    def _reader_gone(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        loop.remove_reader(fd)
        self.outcome.broken_pipe = True
        self._stopped("broken_pipe")

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, self._on_signal, signum)

    def _remove_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signum)

    def _on_signal(self, signum: int) -> None:
        if self.outcome.signal is not None:  # the second one: stop at once
            self._cancel_all()
            return
        self.outcome.signal = signum
        self._stopped("signal")
