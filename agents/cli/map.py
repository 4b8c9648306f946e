"""agents-map: fill a prompt from each JSON Lines record and call an OpenAI-compatible API."""

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

from agents.cli._run import EXIT_STATUS_EPILOG, Parser, Reporter, Streams, exit_with, run
from agents.client import DEFAULT_BASE_URL, Client
from agents.errors import DataError, ExitStatus, UsageError
from agents.formats._options import BadRowHandler
from agents.job import DEFAULTS, Job, build, merge
from agents.mapping import Mapper, Sleep
from agents.progress import Progress, Tally
from agents.results import MERGE_STRATEGIES, OUTPUT_FORMATS
from agents.scheduler import CircuitBreaker, Outcome, Scheduler

PROG = "agents-map"

DESCRIPTION = """\
Fill a prompt from each JSON Lines record on stdin, call an OpenAI-compatible chat API for it,
and write one record per input record to stdout: the record with its result, or an error record.

examples:
  agents-read words.csv | agents-map --prompt 'Translate to French: {word}' | agents-write out.csv
  agents-map -p prompt.txt -j 50 --output-format json < words.jsonl > results.jsonl
  agents-map --config job.yaml --dry-run --limit 3 < words.jsonl
"""


def build_parser(streams: Streams) -> Parser:
    parser = Parser(prog=PROG, description=DESCRIPTION, epilog=EXIT_STATUS_EPILOG, streams=streams)
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="a job.yaml with llm, processing, prompt and output sections; "
        "flags override it (default: none)",
    )
    prompt = parser.add_argument_group("prompt")
    prompt.add_argument(
        "-p",
        "--prompt-file",
        metavar="FILE",
        help="the prompt template, read from FILE; {field} and {field.sub} are "
        "filled from each record, {{ and }} are literal braces",
    )
    prompt.add_argument("--prompt", metavar="TEXT", help="the prompt template, given inline")
    prompt.add_argument(
        "--system",
        metavar="TEXT",
        help="a system prompt (a template too), given inline (default: none)",
    )
    prompt.add_argument(
        "--system-file", metavar="FILE", help="the system prompt, read from FILE (default: none)"
    )
    model = parser.add_argument_group("model and endpoint")
    model.add_argument(
        "-m", "--model", metavar="NAME", help=f"model name (default: {DEFAULTS['model']})"
    )
    model.add_argument(
        "--base-url",
        metavar="URL",
        help=f"the API's base URL (default: $OPENAI_BASE_URL, else {DEFAULT_BASE_URL})",
    )
    model.add_argument(
        "--api-key-env",
        metavar="NAME",
        help="the environment variable that holds the API key "
        "(default: OPENAI_API_KEY); keys are never taken from flags",
    )
    model.add_argument(
        "-H",
        "--header",
        action="append",
        metavar="'NAME: VALUE'",
        help="an extra HTTP header for every request (repeatable; default: none)",
    )
    model.add_argument(
        "--temperature",
        type=float,
        metavar="T",
        help="sampling temperature (default: the server's)",
    )
    model.add_argument(
        "--max-tokens",
        type=int,
        metavar="N",
        help="the answer's token limit, sent as max_tokens (default: the server's)",
    )
    model.add_argument(
        "--max-completion-tokens",
        type=int,
        metavar="N",
        help="the same limit sent as max_completion_tokens, for models that "
        "require it (default: none)",
    )
    model.add_argument("--seed", type=int, metavar="N", help="sampling seed (default: none)")
    model.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help=f"time limit of one request (default: {DEFAULTS['timeout']:g})",
    )
    model.add_argument(
        "--param",
        action="append",
        metavar="KEY=JSON",
        help="another request parameter, its value as JSON, e.g. top_p=0.9 "
        "(repeatable; default: none)",
    )
    model.add_argument(
        "--price",
        metavar="IN,OUT",
        help="dollars per million input and output tokens (default: the price "
        "table's entry for the model)",
    )
    processing = parser.add_argument_group("processing")
    processing.add_argument(
        "-j",
        "--jobs",
        type=int,
        metavar="N",
        help=f"requests in flight at once; 1 is sequential (default: {DEFAULTS['jobs']})",
    )
    processing.add_argument(
        "-k",
        "--keep-order",
        action="store_true",
        default=None,
        help="write results in input order (default: as they complete)",
    )
    processing.add_argument(
        "--max-retries",
        type=int,
        metavar="N",
        help=f"retries of a request after a retryable error (default: {DEFAULTS['max_retries']})",
    )
    processing.add_argument(
        "--retry-delay",
        type=float,
        metavar="SECONDS",
        help=f"the first backoff step, doubled each retry, with jitter; a "
        f"server's Retry-After is waited for when longer "
        f"(default: {DEFAULTS['retry_delay']:g})",
    )
    processing.add_argument(
        "--grace",
        type=float,
        metavar="SECONDS",
        help=f"after Ctrl-C, how long requests in flight may finish "
        f"(default: {DEFAULTS['grace']:g})",
    )
    processing.add_argument(
        "-n",
        "--limit",
        type=int,
        metavar="N",
        help="process only the first N records; with --dry-run, show only "
        "their requests (default: all)",
    )
    processing.add_argument(
        "--dry-run",
        action="store_true",
        default=None,
        help="send nothing: print the requests, missing fields, and the "
        "token and cost estimate of the whole input (default: off)",
    )
    limits = parser.add_argument_group("rate limits and caps")
    limits.add_argument(
        "--rpm",
        type=float,
        metavar="N",
        help="requests per minute allowed (default: learned from the server's "
        "x-ratelimit headers, else no limit)",
    )
    limits.add_argument(
        "--tpm",
        type=float,
        metavar="N",
        help="tokens per minute allowed, counting the prompt and max_tokens "
        "before sending (default: learned, else no limit)",
    )
    limits.add_argument(
        "--rate-group",
        metavar="NAME",
        help="share the --rpm/--tpm budget with every process on this host "
        "that names the same group (default: none, this process alone)",
    )
    limits.add_argument(
        "--max-cost",
        type=float,
        metavar="USD",
        help="stop sending before the spend could pass USD; exit 4, resumable (default: no cap)",
    )
    limits.add_argument(
        "--max-errors",
        metavar="N|PCT%",
        help="stop sending after N failed records, or when PCT%% of those "
        "attempted failed (after 20); exit 4, resumable (default: no cap)",
    )
    resume = parser.add_argument_group("resume")
    resume.add_argument(
        "--resume",
        metavar="OUTPUT",
        help="the output this job writes to (the file agents-write appends to): "
        "records it holds as successes are skipped, so the same command "
        "run again finishes an interrupted job (default: none)",
    )
    resume.add_argument(
        "--keep-failed",
        action="store_true",
        default=None,
        help="with --resume, skip records whose error records are in the output "
        "too (default: off, they are retried)",
    )
    resume.add_argument(
        "--force-resume",
        action="store_true",
        default=None,
        help="resume even though the prompt, model, format, schema or merge "
        "strategy changed, or the input did (default: off, refused)",
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--output-format",
        choices=OUTPUT_FORMATS,
        help="text: the answer as it is; json: parsed as JSON; structured: "
        "parsed and validated against --schema (default: text)",
    )
    output.add_argument(
        "--schema",
        metavar="FILE",
        help="a JSON Schema for --output-format structured, also sent to the "
        "server as response_format (default: none)",
    )
    output.add_argument(
        "--merge",
        choices=MERGE_STRATEGIES,
        help="extend: the record plus the result under --field; update: an "
        "object result's keys merged into the record; replace: the ID "
        "and the result only (default: extend)",
    )
    output.add_argument(
        "--field", metavar="NAME", help="the key that holds the result (default: result)"
    )
    output.add_argument(
        "--max-reasks",
        type=int,
        metavar="N",
        help=f"times an answer that does not parse or validate is asked again, "
        f"apart from retries (default: {DEFAULTS['max_reasks']})",
    )
    output.add_argument(
        "--errors",
        metavar="FILE",
        help="append error records to FILE instead of stdout (default: stdout)",
    )
    output.add_argument(
        "--stats",
        metavar="FILE",
        help="write the run's figures as JSON to FILE at the end (default: none)",
    )
    report = parser.add_argument_group("progress and logs (all on stderr)")
    report.add_argument(
        "--progress",
        action="store_true",
        default=None,
        help="show progress even when stderr is not a terminal (then a plain "
        "line every 5 seconds); default: only on a terminal",
    )
    report.add_argument(
        "--total",
        type=int,
        metavar="N",
        help="the number of records, for the ETA when reading a pipe "
        "(default: counted when stdin is a file)",
    )
    report.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=None,
        help="no progress and no end-of-run summary; errors only (default: off)",
    )
    report.add_argument(
        "--log-level",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="INFO adds retries, DEBUG every request and response with its "
        "usage; the key is redacted (default: WARNING)",
    )
    report.add_argument(
        "--log-file",
        metavar="FILE",
        help="write the log to FILE instead of stderr (default: stderr)",
    )
    return parser


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
    from agents import logs

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
    if bad_lines and status == ExitStatus.OK:
        reporter.warning(f"{len(bad_lines)} input lines were not JSON objects and were skipped")
        return int(ExitStatus.PARTIAL)
    return status


def _dry_run(job: Job, streams: Streams, reporter: Reporter, bad: BadRowHandler) -> int:
    from agents.dryrun import dry_run, report

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
        from agents.checkpoint import Resumer

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
        from agents.caps import CostCap, ErrorCap
        from agents.ratelimit import Budgets, Concurrency, group_file

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
            breaker=CircuitBreaker(),
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
    from agents.usage import stats_document, summary_lines

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
