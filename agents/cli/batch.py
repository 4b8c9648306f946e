"""agents-map --batch at the command line: the run, its summary, --stats and the exit status."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, BinaryIO

from agents.batch.run import BatchOutcome, collect_command, run_batch
from agents.cli._run import Reporter, Streams, save_stats
from agents.errors import ExitStatus, UsageError
from agents.formats._options import BadRowHandler
from agents.map.ending import Ending
from agents.map.job import DEFAULTS, Job
from agents.map.run import Telling


def check_batch_options(job: Job, reporter: Reporter) -> None:
    """What batch mode refuses, and what it ignores (said once, before anything is sent)."""
    o = job.options
    if not o.batch:
        if o.batch_detach or o.batch_cancel:
            raise UsageError("--batch-detach and --batch-cancel go with --batch")
        return
    if o.batch_detach and o.batch_cancel:
        raise UsageError("give --batch-detach or --batch-cancel, not both")
    if o.batch_poll is not None and o.batch_poll <= 0:
        raise UsageError(f"--batch-poll must be positive, not {o.batch_poll:g}")
    ignored = [
        name
        for name, given in (
            ("processing.batch_size", o.batch_size_ignored),
            ("-j", o.jobs != DEFAULTS["jobs"] and not o.batch_size_ignored),
            ("--rpm", o.rpm is not None),
            ("--tpm", o.tpm is not None),
            ("--rate-group", o.rate_group is not None),
            ("--cache", o.cache is not None),
            ("--keep-order", bool(o.keep_order)),
            ("--status", bool(o.status)),
            ("--stream", bool(o.stream)),
            ("--idle-timeout", o.idle_timeout is not None),
        )
        if given
    ]
    if ignored:
        reporter.warning(
            f"{', '.join(ignored)}: not used in batch mode (the provider runs a batch at its "
            "own pace, and results come in input order within each batch)"
        )


def map_batch(
    job: Job,
    streams: Streams,
    reporter: Reporter,
    bad: BadRowHandler,
    errors_out: BinaryIO | None,
    ending: Ending | None = None,
    sleep: Callable[[float], None] | None = None,
) -> int:
    o = job.options
    started = time.monotonic()
    info = reporter.info if not o.quiet else (lambda message: None)
    outcome = run_batch(
        job,
        streams.stdin,
        streams.stdout,
        telling=Telling(reporter.warning, info, streams.stderr),
        sleep=sleep or time.sleep,
        errors_out=errors_out,
        bad=bad,
    )
    return finish_batch(job, outcome, reporter, time.monotonic() - started, ending)


def finish_batch(
    job: Job,
    outcome: BatchOutcome,
    reporter: Reporter,
    seconds: float,
    ending: Ending | None = None,
) -> int:
    """The closing lines, --stats and the exit status of a batch run; its figures are kept
    for ``ending`` (--notify)."""
    if outcome.broken_pipe:
        raise BrokenPipeError
    document = _stats_of(job, outcome, seconds)
    if ending is not None:
        ending.stats, ending.stopped = document, document["stopped"]
    stats_written = save_stats(job.options.stats, document, reporter) if job.options.stats else True
    status = _closing(job, outcome, reporter)
    if not stats_written and status in (ExitStatus.OK, ExitStatus.PARTIAL):
        return int(ExitStatus.FAILURE)
    return status


def _stats_of(job: Job, outcome: BatchOutcome, seconds: float) -> dict[str, Any]:
    """A batch run's figures: the --stats document."""
    from agents.map.usage import stats_document

    document = stats_document(
        usage=outcome.total_usage(),
        price=None,
        model=job.shape.model,
        succeeded=outcome.written,
        failed=outcome.failed,
        errors=outcome.errors,
        retries=outcome.retries,
        requests=outcome.requests + outcome.online_requests,
        latencies=[],
        seconds=seconds,
        stopped="max_cost" if outcome.capped else ("detached" if outcome.detached else None),
    )
    cost = outcome.cost(job.price)
    document["cost_usd"] = round(cost, 6) if cost is not None else None
    document["mode"] = "batch"
    document["batches"] = list(outcome.batches.values())
    document["waited_seconds"] = round(outcome.waited, 1)
    if outcome.online_requests:
        price = job.price
        document["online_retries"] = {
            "requests": outcome.online_requests,
            "cost_usd": round(price.cost(outcome.online_usage), 6) if price else None,
        }
    return document


def _closing(job: Job, outcome: BatchOutcome, reporter: Reporter) -> int:
    from agents.map.usage import summary_lines

    o = job.options
    usage = outcome.total_usage()
    if not o.quiet and usage.prompt + usage.completion:
        tokens, unpriced = summary_lines(usage, None, job.shape.model)
        reporter.say(tokens)
        cost = outcome.cost(job.price)
        online = " (online retries at the online price)" if outcome.online_requests else ""
        reporter.say(
            f"Estimated cost: ${cost:,.4f} at the batch price{online}"
            if cost is not None
            else unpriced
        )
    if o.batch_cancel:
        if outcome.cancelled:
            reporter.info(
                f"cancelled {', '.join(outcome.cancelled)}; the same command without "
                "--batch-cancel collects what they did and submits the rest again"
            )
            return int(ExitStatus.CAPPED)
        reporter.info("no batch of this job is running")
        return int(ExitStatus.OK)
    if outcome.detached:
        reporter.info(
            f"submitted; {len(outcome.detached)} "
            f"{'batch is' if len(outcome.detached) == 1 else 'batches are'} running: "
            f"{', '.join(outcome.detached)}"
        )
        reporter.info(
            f"collect the results later with the same command, on the same input: "
            f"{collect_command()}"
        )
        return int(ExitStatus.CAPPED)
    if outcome.capped is not None:
        reporter.info(f"stopped at a cap: {outcome.capped}")
        reporter.info(
            f"{outcome.written} results and {outcome.failed} error records were written; run "
            "the same command again (with a higher cap) to resume"
        )
        return int(ExitStatus.CAPPED)
    if outcome.failed:
        kinds = ", ".join(f"{kind}: {count}" for kind, count in sorted(outcome.errors.items()))
        reporter.warning(
            f"{outcome.failed} of {outcome.failed + outcome.written} records failed ({kinds}); "
            "their error records are in the output"
        )
        return int(ExitStatus.PARTIAL)
    if outcome.duplicates:
        return int(ExitStatus.PARTIAL)
    return int(ExitStatus.OK)


def show_batch_dry_run(job: Job, streams: Streams, reporter: Reporter, bad: BadRowHandler) -> int:
    from agents.batch.run import dry_run_batches

    lines, missing = dry_run_batches(job, streams.stdin, streams.stdout, bad)
    if not job.options.quiet:
        for line in lines:
            reporter.say(line)
    return int(ExitStatus.PARTIAL if missing else ExitStatus.OK)
