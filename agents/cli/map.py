"""agents-map: fill a prompt from each JSON Lines record and call an OpenAI-compatible API.

The options are in map_options.py; this module wires them to the library and maps the run's
outcome to an exit status.
"""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import sys
import time
from collections.abc import Sequence
from typing import BinaryIO

import orjson

from agents.cli._run import Reporter, Streams, exit_with, run
from agents.cli.map_options import PROG, build_parser
from agents.contract.ids import ID_KEY
from agents.errors import DataError, ExitStatus, UsageError
from agents.formats._options import BadRowHandler
from agents.map.http import Client
from agents.map.job import Job, build, merge
from agents.map.progress import Progress, Tally
from agents.map.record import Mapper, Sleep
from agents.map.window import CircuitBreaker, Outcome, Scheduler


def main(
    argv: Sequence[str] | None = None, streams: Streams | None = None, sleep: Sleep | None = None
) -> int:
    """The command; ``sleep`` replaces the backoff waits in tests."""
    streams = streams or Streams()
    return run(PROG, lambda reporter: _map(argv, streams, reporter, sleep), streams)


def _map(
    argv: Sequence[str] | None, streams: Streams, reporter: Reporter, sleep: Sleep | None
) -> int:
    args = build_parser(streams).parse_args(argv)
    flags = {key: value for key, value in vars(args).items() if key != "config"}
    job = build(merge(flags, args.config))
    o = job.options

    bad_lines: list[str] = []

    def bad(error: DataError) -> None:
        bad_lines.append(error.message)
        reporter.warning(f"{error.message} (skipped)")

    if o.dry_run:
        return _dry_run(job, streams, reporter, bad)
    from agents.map import logs

    handler = logs.configure(o.log_level, o.log_file, job.endpoint.api_key, PROG)
    errors_out: BinaryIO | None = None
    if o.errors:
        try:
            errors_out = open(o.errors, "ab")
        except OSError as error:
            raise UsageError(f"--errors {o.errors}: cannot write: {error.strerror}") from None
    started = time.monotonic()
    try:
        outcome, mapper = _event_loop().run_until_complete(
            _run_job(job, streams, reporter, sleep or asyncio.sleep, errors_out, bad)
        )
    finally:
        if errors_out is not None:
            errors_out.close()
        handler.close()
    status = _finish(job, outcome, mapper, reporter, time.monotonic() - started)
    if outcome.duplicates and status == ExitStatus.OK:
        status = int(ExitStatus.PARTIAL)
    if bad_lines and status == ExitStatus.OK:
        count = len(bad_lines)
        reporter.warning(f"skipped {count} bad input {'line' if count == 1 else 'lines'}")
        return int(ExitStatus.PARTIAL)
    return status


def _dry_run(job: Job, streams: Streams, reporter: Reporter, bad: BadRowHandler) -> int:
    from agents.map.dryrun import dry_run, report

    o = job.options
    body = {"model": job.shape.model, **job.shape.params}
    if job.response_formats[0] is not None:
        body["response_format"] = job.response_formats[0]
    estimate = dry_run(
        streams.stdin,
        streams.stdout,
        job.template,
        job.system,
        body,
        o.limit,
        o.max_tokens or o.max_completion_tokens,
        bad,
    )
    for line in report(estimate, job.price, job.shape.model, o.rpm, o.tpm):
        reporter.say(line)
    return int(ExitStatus.OK)


def _total(stdin: BinaryIO, explicit: int | None, limit: int | None) -> int | None:
    """--total, or the lines left in stdin when it is a regular file (counted without reading
    it for real: pread leaves the offset where it is)."""
    total = explicit
    if total is None:
        try:
            fd = stdin.fileno()
            info = os.fstat(fd)
        except (OSError, ValueError, AttributeError):
            info = None
        if info is not None and stat.S_ISREG(info.st_mode):
            offset, count = os.lseek(fd, 0, os.SEEK_CUR), 0
            while chunk := os.pread(fd, 1 << 20, offset):
                count += chunk.count(b"\n")
                offset += len(chunk)
            total = count
    if total is not None and limit is not None:
        total = min(total, limit)
    return total


async def _run_job(
    job: Job,
    streams: Streams,
    reporter: Reporter,
    sleep: Sleep,
    errors_out: BinaryIO | None,
    bad: BadRowHandler,
) -> tuple[Outcome, Mapper]:
    o = job.options
    tally = Tally()
    terminal = _is_terminal(streams.stderr)
    progress = None
    if not o.quiet and (terminal or o.progress):
        progress = Progress(
            streams.stderr, tally, _total(streams.stdin, o.total, o.limit), terminal
        )
    resumer = None
    if o.resume:
        from agents.done.resume import Resumer

        resumer = Resumer(
            o.resume, job.fingerprint, keep_failed=o.keep_failed, force=o.force_resume
        )
        resumer.open()
        held = resumer.done
        if held.succeeded or held.failed:
            reporter.info(
                f"resuming {o.resume}: it holds {len(held.succeeded):,} results and "
                f"{len(held.failed):,} failed records"
            )
    client = Client(job.endpoint, o.jobs)
    try:
        from agents.map.caps import CostCap, ErrorCap
        from agents.map.limits import Budgets, Concurrency, group_file

        budgets = Budgets(o.rpm, o.tpm, group_file(o.rate_group) if o.rate_group else None)
        mapper = Mapper(
            client,
            sleep=sleep,
            warn=reporter.warning,
            budgets=budgets,
            concurrency=Concurrency(o.jobs),
            price=job.price,
            cost_cap=CostCap(o.max_cost) if o.max_cost is not None else None,
            **job.mapper_args,
        )
        scheduler = Scheduler(
            mapper.process,
            streams.stdout,
            jobs=o.jobs,
            keep_order=o.keep_order,
            errors_out=errors_out,
            # A resumed job whose output holds successes has shown its configuration works:
            # the records it retries first, which failed before, may well fail again.
            breaker=CircuitBreaker(any_success=bool(resumer and resumer.done.succeeded)),
            grace=max(0.0, o.grace),
            bad=bad,
            limit=o.limit,
            on_result=tally.record,
            skip=resumer.skip if resumer is not None else None,
            error_cap=ErrorCap.parse(o.max_errors) if o.max_errors else None,
        )
        drawing = asyncio.create_task(progress.run()) if progress else None
        try:
            outcome = await scheduler.run(streams.stdin)
        finally:
            if drawing is not None:
                drawing.cancel()
                await asyncio.gather(drawing, return_exceptions=True)
                assert progress is not None
                progress.finish()
        if scheduler.ids.hashed:
            reporter.warning(
                f"{scheduler.ids.hashed} records had no _id; each got one from a hash of its "
                "content"
                + (
                    f" ({scheduler.ids.duplicates} were duplicates and share an ID)"
                    if scheduler.ids.duplicates
                    else ""
                ),
                "read the data through agents-read, which gives every record an ID",
            )
        if job.merger.dropped_ids:
            reporter.warning(
                f"{job.merger.dropped_ids:,} results had an {ID_KEY} key, which is reserved: it "
                "was dropped, and each record kept its own ID"
            )
        if resumer is not None and resumer.duplicates.count:
            reporter.warning(
                resumer.duplicates.describe("only the first record of each ID is sent")
            )
            outcome.duplicates = resumer.duplicates.count
        if resumer is not None and (resumer.skipped or resumer.retried):
            reporter.info(
                f"skipped {resumer.skipped:,} records already done; retried "
                f"{resumer.retried:,} that had failed"
            )
        return outcome, mapper
    finally:
        if resumer is not None:
            resumer.close()
        await client.close()


def _is_terminal(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError, OSError):
        return False


def _event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        return asyncio.new_event_loop()


def _finish(job: Job, outcome: Outcome, mapper: Mapper, reporter: Reporter, seconds: float) -> int:
    from agents.map.usage import stats_document, summary_lines

    o = job.options
    counters = mapper.counters
    stopped = (
        "fatal"
        if outcome.fatal
        else "broken_pipe"
        if outcome.broken_pipe
        else "signal"
        if outcome.signal
        else None
    )
    if o.stats:
        document = stats_document(
            usage=counters.usage,
            price=job.price,
            model=job.shape.model,
            succeeded=outcome.written,
            failed=outcome.failed,
            errors=outcome.errors,
            retries=counters.retries,
            requests=counters.requests,
            latencies=counters.latencies.values,
            seconds=seconds,
            stopped=stopped,
        )
        try:
            with open(o.stats, "wb") as stream:
                stream.write(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
        except OSError as error:
            reporter.error(f"--stats {o.stats}: cannot write: {error.strerror}")
    if outcome.broken_pipe:
        raise BrokenPipeError
    if not o.quiet and counters.usage.prompt + counters.usage.completion:
        for line in summary_lines(counters.usage, job.price, job.shape.model):
            reporter.say(line)
    if outcome.capped is not None and outcome.fatal is None and outcome.signal is None:
        reporter.info(f"stopped at a cap: {outcome.capped}")
        reporter.info(
            f"{outcome.written} results and {outcome.failed} error records were "
            "written; run the same command again (with a higher cap) to resume"
        )
        return int(ExitStatus.CAPPED)
    if outcome.fatal is not None:
        reporter.error(outcome.fatal)
        reporter.info(
            f"stopped: {outcome.written} results and {outcome.failed} error records "
            "were written before it"
        )
        return int(ExitStatus.FAILURE)
    if outcome.signal is not None:
        lost = (
            f"; {outcome.in_flight_lost} in flight were dropped" if outcome.in_flight_lost else ""
        )
        reporter.info(
            f"interrupted: {outcome.written} results and {outcome.failed} error "
            f"records written{lost}"
        )
        if o.resume:
            reporter.info("run the same command again to resume")
        return int(
            ExitStatus.INTERRUPTED if outcome.signal == signal.SIGINT else ExitStatus.TERMINATED
        )
    if outcome.failed:
        kinds = ", ".join(f"{kind}: {count}" for kind, count in sorted(outcome.errors.items()))
        reporter.warning(
            f"{outcome.failed} of {outcome.failed + outcome.written} records "
            f"failed ({kinds}); their error records are in the output"
        )
        return int(ExitStatus.PARTIAL)
    return int(ExitStatus.OK)


def entry_point() -> None:
    exit_with(main(sys.argv[1:]))
