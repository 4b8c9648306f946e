"""agents-map: fill a prompt from each JSON Lines record and call an OpenAI-compatible API.

The options are in map_options.py; this module wires them to the library and maps the run's
outcome to an exit status.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, BinaryIO

from agents.cli._run import Reporter, Streams, exit_with, run, save_stats
from agents.cli.map_options import PROG, build_parser
from agents.errors import DataError, ExitStatus, TargetError, UsageError
from agents.formats._io import check_writable
from agents.formats._options import BadRowHandler
from agents.map.ending import Ending
from agents.map.job import Job, build, merge
from agents.map.record import Mapper, Sleep
from agents.map.run import Telling, event_loop, run_job
from agents.map.window import Outcome


def main(
    argv: Sequence[str] | None = None, streams: Streams | None = None, sleep: Sleep | None = None
) -> int:
    """The command; ``sleep`` replaces the backoff waits in tests."""
    streams = streams or Streams()
    ending = Ending()
    status = run(PROG, lambda reporter: _map(argv, streams, reporter, sleep, ending), streams)
    ending.finish(status)
    return status


def _map(
    argv: Sequence[str] | None,
    streams: Streams,
    reporter: Reporter,
    sleep: Sleep | None,
    ending: Ending,
) -> int:
    args = build_parser(streams).parse_args(argv)
    flags = {key: value for key, value in vars(args).items() if key != "config"}
    job = build(merge(flags, args.config))
    o = job.options

    bad_lines: list[str] = []

    def bad(error: DataError) -> None:
        bad_lines.append(error.message)
        reporter.warning(f"{error.message} (skipped)", error.hint)

    from agents.cli.batch import check_batch_options

    check_batch_options(job, reporter)
    if o.dry_run:
        if o.batch:
            from agents.cli.batch import show_batch_dry_run

            status = show_batch_dry_run(job, streams, reporter, bad)
        else:
            status = show_dry_run(job, streams, reporter, bad)
        return int(ExitStatus.PARTIAL) if bad_lines and not status else status
    status_file = ending.start(
        o, job.fingerprint, job.shape.model, PROG, reporter.warning, status=not o.batch
    )
    if o.batch:
        from agents.cli.batch import map_batch

        with side_outputs(job, PROG) as errors_out:
            status = map_batch(job, streams, reporter, bad, errors_out, ending)
        if bad_lines and status == ExitStatus.OK:
            return int(ExitStatus.PARTIAL)
        return status
    started = time.monotonic()
    with side_outputs(job, PROG) as errors_out:
        # -q: errors and warnings only, so no "resuming ..." or "skipped ..." notes either
        info = reporter.info if not job.options.quiet else _silent
        telling = Telling(reporter.warning, info, streams.stderr, status_file)
        outcome, mapper = event_loop().run_until_complete(
            run_job(
                job,
                streams.stdin,
                streams.stdout,
                telling=telling,
                sleep=sleep or asyncio.sleep,
                errors_out=errors_out,
                bad=bad,
            )
        )
    status = finish(job, outcome, mapper, reporter, time.monotonic() - started, ending)
    if outcome.duplicates and status == ExitStatus.OK:
        status = int(ExitStatus.PARTIAL)
    if bad_lines and status == ExitStatus.OK:
        count = len(bad_lines)
        reporter.warning(f"skipped {count} bad input {'line' if count == 1 else 'lines'}")
        return int(ExitStatus.PARTIAL)
    return status


@contextmanager
def side_outputs(job: Job, prog: str) -> Iterator[BinaryIO | None]:
    """The log (--log-level, --log-file) and the --errors file for the run; the latter yielded."""
    from agents.map import logs

    o = job.options
    for flag, path in (("--stats", o.stats), ("--log-file", o.log_file), ("--errors", o.errors)):
        if path:  # before anything is sent: a file that cannot be written is a usage error
            try:
                check_writable(path)
            except TargetError as error:
                raise UsageError(f"{flag} {error.message}") from None
    keys = [job.endpoint.api_key, *(server.api_key for _, server in job.endpoints)]
    handler = logs.configure(o.log_level, o.log_file, keys, prog)
    try:
        errors_out: BinaryIO | None = None
        if o.errors:
            try:
                errors_out = open(o.errors, "ab")
            except OSError as error:
                raise UsageError(f"--errors {o.errors}: cannot write: {error.strerror}") from None
        try:
            yield errors_out
        finally:
            if errors_out is not None:
                errors_out.close()
    finally:
        handler.close()


def _silent(message: str) -> None:
    return None


def show_dry_run(job: Job, streams: Streams, reporter: Reporter, bad: BadRowHandler) -> int:
    """--dry-run: the requests on stdout, the estimate on stderr; nothing is sent."""
    from agents.map.dryrun import dry_run, report

    o = job.options
    body = {"model": job.shape.model, **job.shape.params}
    if job.response_formats[0] is not None:
        body["response_format"] = job.response_formats[0]
    resumer = None
    if o.resume:  # what a rerun would send: the same checks, nothing written
        from agents.done.resume import Resumer

        resumer = Resumer(
            o.resume, job.fingerprint, keep_failed=o.keep_failed, force=o.force_resume, dry=True
        )
        resumer.open()
    from agents.map.run import dry_run_cache

    cache = dry_run_cache(job, reporter.warning) if o.cache_mode != "refresh" else None
    answered = None
    if cache is not None:
        keys = cache.keys({key: value for key, value in body.items() if key != "model"})
        answered = lambda messages: cache.store.holds(keys.key(messages))  # noqa: E731
    estimate = dry_run(
        streams.stdin,
        streams.stdout,
        job.template,
        job.system,
        body,
        o.limit,
        o.max_tokens or o.max_completion_tokens,
        bad,
        skip=resumer.skip if resumer is not None else None,
        answered=answered,
    )
    estimate.resumed = o.resume
    if cache is not None:
        estimate.cached = estimate.cached or 0
        estimate.cache = str(cache.store.path)
        cache.store.close()
    if not o.quiet:  # -q: the requests on stdout only (errors and warnings still show)
        for line in report(estimate, job.price, job.shape.model, o.rpm, o.tpm):
            reporter.say(line)
    # A script can gate on the dry run: 3 when some record would fail (missing fields).
    return int(ExitStatus.PARTIAL if estimate.missing else ExitStatus.OK)


def finish(
    job: Job,
    outcome: Outcome,
    mapper: Mapper,
    reporter: Reporter,
    seconds: float,
    ending: Ending | None = None,
) -> int:
    """The closing lines and the exit status of a run that went through the window; its
    figures are written (--stats) and kept for ``ending`` (--notify)."""
    document = stats_of(job, outcome, mapper, seconds)
    if ending is not None:
        ending.stats, ending.stopped = document, outcome.stopped
    stats_written = save_stats(job.options.stats, document, reporter) if job.options.stats else True
    if outcome.broken_pipe:
        raise BrokenPipeError
    status = closing(job, outcome, mapper, reporter)
    if not stats_written and status in (ExitStatus.OK, ExitStatus.PARTIAL):
        # Its folder was checked before the first request, so this is rare (a full disk, a
        # folder removed): the results are written, but what was asked for is not all there.
        return int(ExitStatus.FAILURE)
    return status


def _by_model(mapper: Mapper) -> dict[str, Any]:
    """With fallback models, each model's tokens and price, for the cost (else nothing)."""
    if not mapper.fallbacks:
        return {}
    return {"by_model": mapper.counters.by_model, "prices": mapper.prices}


def stats_of(job: Job, outcome: Outcome, mapper: Mapper, seconds: float) -> dict[str, Any]:
    """The run's figures: the --stats document."""
    from agents.map.usage import cache_stats, endpoint_stats, stats_document

    counters = mapper.counters
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
        stopped=outcome.stopped,
        first_tokens=counters.first_tokens.values,
        **_by_model(mapper),
    )
    if mapper.cache is not None:
        document["cache"] = cache_stats(mapper.cache, job.price)
    # requests not sent because an identical one was in flight (null: --no-dedup)
    document["shared"] = mapper.sharing.shared if mapper.sharing is not None else None
    # answers that said nothing of their usage: their tokens (and cost) are estimates
    document["estimated_usage"] = counters.estimated
    if mapper.router.several:
        document["endpoints"] = endpoint_stats(mapper.router.lanes, mapper.prices)
    return document


def closing(job: Job, outcome: Outcome, mapper: Mapper, reporter: Reporter) -> int:
    """The summary, what stopped the run, and the exit status."""
    from agents.map.usage import cache_line, endpoint_lines, shared_line, summary_lines

    o = job.options
    counters = mapper.counters
    if not o.quiet and counters.usage.prompt + counters.usage.completion:
        for line in summary_lines(counters.usage, job.price, job.shape.model, **_by_model(mapper)):
            reporter.say(line)
    if not o.quiet and mapper.router.several:
        for line in endpoint_lines(mapper.router.lanes, mapper.prices):
            reporter.say(line)
    if not o.quiet and mapper.cache is not None:
        reporter.say(cache_line(mapper.cache, job.price))
    if not o.quiet and mapper.sharing is not None and mapper.sharing.shared:
        reporter.say(shared_line(mapper.sharing.shared))
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
        ) + (f"; {outcome.not_sent} waiting to be sent were not sent" if outcome.not_sent else "")
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
