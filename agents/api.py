"""The Python API: what the commands do, as functions.

    records = read_records("words.csv")
    job = Job.create(prompt="Translate to French: {word}", base_url=url, jobs=8)
    write_records(map_records(records, job), "fr.csv")

``map_records`` is a plain iterator: it runs the job's own event loop in a thread, so it works
in a script and in a notebook alike; ``amap_records`` is its asynchronous twin.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import AsyncIterator, Generator, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING

import orjson

from agents.contract.codec import encode, exact
from agents.contract.ids import ID_KEY, Record, id_problem
from agents.done.targets import LedgerTarget, write_locked
from agents.errors import AgentsError, CapReached, DataError
from agents.formats import resolve
from agents.formats._options import BadRowHandler, ReadOptions, WriteOptions, raise_bad
from agents.formats.read import Selection
from agents.formats.read import read_records as _read
from agents.map.job import Job
from agents.map.run import Telling, event_loop, run_job
from agents.map.window import Outcome

if TYPE_CHECKING:
    from agents.batch.run import BatchOutcome

__all__ = ["Job", "WriteSummary", "amap_records", "map_records", "read_records", "write_records"]


def read_records(
    source: str | os.PathLike[str],
    *,
    format: str | None = None,
    id_field: str | None = None,
    limit: int | None = None,
    shard: tuple[int, int] | None = None,
    encoding: str = "utf-8",
    delimiter: str | None = None,
    no_header: bool = False,
    columns: list[str] | None = None,
    key: str | None = None,
    query: str | None = None,
    table: str | None = None,
    on_bad: BadRowHandler = raise_bad,
) -> Iterator[Record]:
    """The records of ``source`` (a path, ``-`` for stdin, or a ``sqlite://`` URL), each with
    its ID under ``_id``, as agents-read gives them. A bad row raises :class:`DataError` unless
    ``on_bad`` takes it."""
    location = resolve(os.fspath(source), format)
    options = ReadOptions(
        encoding=encoding,
        delimiter=delimiter,
        no_header=no_header,
        columns=columns,
        key=key,
        query=query or location.query,
        table=table or location.table,
    )
    selection = Selection(id_field=id_field, limit=limit, shard=shard)
    yield from _read(location, options, selection, sys.stdin.buffer, on_bad)


@dataclass(frozen=True)
class WriteSummary:
    written: int
    skipped: int  # already in the output (appending)
    duplicates: int  # records whose ID came earlier in the same input (dropped or replacing)


def write_records(
    records: Iterable[Record],
    target: str | os.PathLike[str],
    *,
    format: str | None = None,
    append: bool = False,
    columns: list[str] | None = None,
    delimiter: str | None = None,
    field: str = "content",
    table: str | None = None,
    on_duplicate: str = "keep-first",
    wait: bool = False,
) -> WriteSummary:
    """Write ``records`` to ``target`` as agents-write does: atomically, or with ``append``
    durably and resumably; one writer per target (``wait`` queues behind another)."""
    target = os.fspath(target)
    location = resolve(target, format, default="jsonl")
    options = WriteOptions(
        columns=columns,
        delimiter=delimiter,
        field=field,
        table=table or location.table,
        append=append,
        on_duplicate=on_duplicate,
    )
    opened = write_locked(
        location,
        options,
        _batches(record for record, _ in _checked(records)),
        sys.stdout.buffer,
        wait=wait,
    )
    duplicates = opened.ledger.duplicates.count if isinstance(opened, LedgerTarget) else 0
    return WriteSummary(opened.written, opened.skipped, duplicates)


def _batches(records: Iterable[Record], size: int = 256) -> Iterator[list[Record]]:
    iterator = iter(records)
    while batch := list(islice(iterator, size)):
        yield batch


def _checked(records: Iterable[Record]) -> Iterator[tuple[Record, bytes]]:
    """Records from Python held to the stream contract, as if they had been read from JSON (a
    bad ID refused, an integer beyond 64 bits kept as its decimal text), with their line."""
    for number, record in enumerate(records, 1):
        if problem := id_problem(record):
            raise DataError(f"record {number}", problem)
        try:
            line = encode(record)
        except TypeError:  # orjson: an integer beyond 64 bits, or a value JSON cannot hold
            record = exact(record)
            try:
                line = encode(record)
            except TypeError as error:
                raise DataError(
                    f"record {number} (_id {record.get(ID_KEY)!r})",
                    f"cannot be written as JSON: {error}",
                    "records hold JSON values: str (whole Unicode, no lone surrogates), int, "
                    "float, bool, None, list and dict",
                ) from None
        yield record, line


def map_records(records: Iterable[Record], job: Job) -> Generator[Record, None, None]:
    """Each record's result (or error record), in completion order (input order with the job's
    ``keep_order``), as agents-map gives them. Raises :class:`AgentsError` when the run stops
    (a fatal error, exit status 1) and :class:`CapReached` at a spending cap."""
    runner = _Runner(records, job)
    runner.start()
    try:
        with os.fdopen(runner.results, "rb") as results:
            for line in results:
                yield orjson.loads(line)
    finally:
        runner.finish()


async def amap_records(records: Iterable[Record], job: Job) -> AsyncIterator[Record]:
    """:func:`map_records` for async code: the job runs in its own thread and loop."""
    iterator = map_records(records, job)
    done = object()
    try:
        while (item := await asyncio.to_thread(next, iterator, done)) is not done:
            yield item  # type: ignore[misc]
    finally:
        await asyncio.to_thread(iterator.close)


class _Runner:
    """A job in a thread of its own, fed and read through pipes (so backpressure works as it
    does between the commands)."""

    def __init__(self, records: Iterable[Record], job: Job) -> None:
        self.records = records
        self.job = job
        self.inputs, self.feed_end = os.pipe()
        self.results, self.results_end = os.pipe()
        self.outcome: Outcome | None = None
        self.batch: BatchOutcome | None = None  # batch=True: the provider's Batch API
        self.error: BaseException | None = None
        self.threads = [
            threading.Thread(target=self._feed, daemon=True),
            threading.Thread(target=self._work, daemon=True),
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _feed(self) -> None:
        with os.fdopen(self.feed_end, "wb") as stream:
            try:
                for _, line in _checked(self.records):
                    stream.write(line)
            except BrokenPipeError:
                pass  # the job stopped reading
            except BaseException as error:
                self.error = error

    def _work(self) -> None:
        warnings: list[str] = []
        telling = Telling(lambda message, hint=None: warnings.append(message))
        try:
            with os.fdopen(self.inputs, "rb") as stdin, os.fdopen(self.results_end, "wb") as out:
                if self.job.options.batch:
                    from agents.batch.run import run_batch

                    self.batch = run_batch(self.job, stdin, out, telling=telling)
                    return
                loop = event_loop()
                try:
                    self.outcome, _ = loop.run_until_complete(
                        run_job(self.job, stdin, out, telling=telling)
                    )
                finally:
                    loop.close()
        except BrokenPipeError:
            pass  # the reader stopped iterating: the job stopped, as it should
        except BaseException as error:
            self.error = self.error or error

    def finish(self) -> None:
        """After the results were read (their pipe closed: a reader that stopped early stops
        the job, which then sees a broken pipe)."""
        for thread in self.threads:
            thread.join()
        if self.error is not None:
            raise self.error
        if self.batch is not None and (self.batch.capped or self.batch.detached):
            running = ", ".join(self.batch.detached)
            raise CapReached(
                self.batch.capped or f"submitted; running: {running}; call again to collect"
            )
        outcome = self.outcome
        if outcome is not None and outcome.fatal:
            raise AgentsError(outcome.fatal)
        if outcome is not None and outcome.capped:
            raise CapReached(outcome.capped)
