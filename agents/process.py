"""agents process INPUT OUTPUT: read, map and write in one command, with resume built in.

The durable state is a JSON Lines work file beside the output, ``OUTPUT.agents-work.jsonl``:
results are appended to it as they arrive (agents-write --append's rules: exactly once, torn
lines repaired, error records superseded), and agents-map resumes from it. OUTPUT itself is
rendered from the work file, atomically, when a run ends with every record done (exit 0) or
done but some failed (exit 3), so make never sees a half-done target and every format
agents-write knows works (CSV, JSON, SQLite, text, .gz). ``OUTPUT.agents-process.json`` records
the settings, so that ``agents resume OUTPUT`` carries on: paths made absolute, a job file named
by its path (its ``${VAR}`` stay unexpanded), never a key.

The job runs in the main thread's event loop (so Ctrl-C and SIGTERM stop it as they stop
agents-map: answers in flight are kept); the input is read and the work file written by two
threads, through pipes, so backpressure works as it does between the commands.
"""

from __future__ import annotations

import io
import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from agents.contract.codec import encode
from agents.contract.error_record import is_error_record
from agents.contract.ids import Record
from agents.done.lock import WriterLock
from agents.done.targets import open_target, write_locked
from agents.errors import UsageError
from agents.formats import Location, resolve
from agents.formats._options import BadRowHandler, ReadOptions, WriteOptions, raise_bad
from agents.formats.jsonl import batches
from agents.formats.read import Selection, read_records
from agents.formats.write import Target
from agents.map.job import Job
from agents.map.record import Mapper, Sleep
from agents.map.run import Telling, event_loop, run_job
from agents.map.window import Outcome

if TYPE_CHECKING:
    from agents.batch.run import BatchOutcome

WORK_SUFFIX = ".agents-work.jsonl"
SETTINGS_SUFFIX = ".agents-process.json"
SETTINGS_VERSION = 1


def work_file(output: Location) -> str:
    return output.path + WORK_SUFFIX


def settings_file(output: Location) -> str:
    return output.path + SETTINGS_SUFFIX


@dataclass(frozen=True)
class Source:
    """What to read, as agents-read would."""

    location: Location
    options: ReadOptions
    selection: Selection


@dataclass
class Processed:
    outcome: Outcome
    mapper: Mapper


@dataclass
class BatchProcessed:
    """What --batch did (agents.batch.run)."""

    outcome: BatchOutcome


def output_location(output: str) -> Location:
    location = resolve(output, None)
    if location.path == "-":
        raise UsageError("agents process needs an output file, not '-'")
    return location


def process(
    source: Source,
    output: Location,
    job: Job,
    stdin: BinaryIO,
    *,
    telling: Telling,
    sleep: Sleep,
    bad: BadRowHandler = raise_bad,
    errors_out: BinaryIO | None = None,
    when_locked: Callable[[], None] | None = None,
) -> Processed | BatchProcessed:
    """Run the job over the source into the work file (resuming what it holds); with
    ``errors_out``, error records go there instead (agents-map --errors)."""
    work = resolve(work_file(output), "jsonl")
    lock = WriterLock(work.path)
    lock.acquire()
    try:
        if when_locked is not None:  # what must not happen unless this run owns the output
            when_locked()
        target = open_target(work, WriteOptions(append=True), stdin)
        try:
            result = _run(
                source,
                target,
                job,
                stdin,
                telling=telling,
                sleep=sleep,
                bad=bad,
                errors_out=errors_out,
            )
        except BaseException:
            target.abort()
            raise
        target.commit()
        if isinstance(result, BatchProcessed):
            from agents.batch.run import forget_written

            forget_written(job)  # its results are in the work file: the batches are done with
        return result
    finally:
        lock.release()


def _run(
    source: Source,
    target: Target,
    job: Job,
    stdin: BinaryIO,
    *,
    telling: Telling,
    sleep: Sleep,
    bad: BadRowHandler,
    errors_out: BinaryIO | None,
) -> Processed | BatchProcessed:
    records_read, records_write = os.pipe()
    results_read, results_write = os.pipe()
    failures: list[BaseException] = []
    feeder = _thread(failures, _feed, source, stdin, bad, records_write)
    writer = _thread(failures, _store, target, results_read)
    try:
        with (
            os.fdopen(records_read, "rb") as records_in,
            os.fdopen(results_write, "wb") as results_out,
        ):
            result: Processed | BatchProcessed
            if job.options.batch:
                from agents.batch.run import run_batch

                result = BatchProcessed(
                    run_batch(job, records_in, results_out, telling=telling, errors_out=errors_out)
                )
            else:
                loop = event_loop()
                try:
                    outcome, mapper = loop.run_until_complete(
                        run_job(
                            job,
                            records_in,
                            results_out,
                            telling=telling,
                            sleep=sleep,
                            errors_out=errors_out,
                        )
                    )
                finally:
                    loop.close()
                result = Processed(outcome, mapper)
    finally:
        feeder.join()
        writer.join()
    if failures:
        raise failures[0]
    return result


def _thread(
    failures: list[BaseException], work: Callable[..., None], *args: Any
) -> threading.Thread:
    def run() -> None:
        try:
            work(*args)
        except BaseException as error:
            failures.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _feed(source: Source, stdin: BinaryIO, bad: BadRowHandler, fd: int) -> None:
    """The input's records into the job's pipe (the job stopping early closes it)."""
    with os.fdopen(fd, "wb") as pipe:
        try:
            for record in read_records(
                source.location, source.options, source.selection, stdin, bad
            ):
                pipe.write(encode(record))
        except BrokenPipeError:
            pass


def _store(target: Target, fd: int) -> None:
    """The job's results into the work file, durably, until the job closes its output."""
    with os.fdopen(fd, "rb") as pipe:
        target.consume(pipe, "<results>", raise_bad)


def render(output: Location, format_options: WriteOptions | None = None) -> tuple[int, int]:
    """OUTPUT from the work file, replaced whole and atomically: (records written, error
    records left out). A text output holds results only: error records have none to show."""
    work = resolve(work_file(output), "jsonl")
    options = format_options or WriteOptions(table=output.table)
    left_out = 0

    def results() -> Iterator[list[Record]]:
        nonlocal left_out
        with open(work.path, "rb") as stream:
            for batch in batches(stream, work.path, raise_bad):
                if output.format == "text":
                    kept = [record for record in batch if not is_error_record(record)]
                    left_out += len(batch) - len(kept)
                    batch = kept
                yield batch

    target = write_locked(output, options, results(), io.BytesIO())
    return target.written, left_out


# Settings for agents resume ---------------------------------------------------------------------


def save_settings(output: Location, settings: dict[str, Any]) -> None:
    document = {"version": SETTINGS_VERSION, **settings}
    with open(settings_file(output), "w", encoding="utf-8") as stream:
        json.dump(document, stream, indent=1, sort_keys=True)
        stream.write("\n")


def load_settings(output: Location) -> dict[str, Any]:
    path = settings_file(output)
    try:
        with open(path, encoding="utf-8") as stream:
            document = json.load(stream)
    except FileNotFoundError:
        raise UsageError(
            f"{output.path}: no job to resume (no {os.path.basename(path)} beside it)",
            "start it with agents process INPUT OUTPUT ...",
        ) from None
    except (OSError, ValueError) as error:
        raise UsageError(f"{path}: cannot read the recorded settings: {error}") from None
    if not isinstance(document, dict) or document.get("version") != SETTINGS_VERSION:
        raise UsageError(f"{path}: settings of another version of agents")
    if not isinstance(document.get("arguments"), dict):
        raise UsageError(
            f"{path}: not the settings agents process records (was it written over?)",
            "run the agents process command again: the work file beside it is resumed",
        )
    return document
