"""agents-map: fill a prompt from each JSON Lines record and call an OpenAI-compatible API."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import orjson

from agents.cli._run import EXIT_STATUS_EPILOG, Parser, Reporter, Streams, exit_with, run
from agents.client import DEFAULT_BASE_URL, Client, Endpoint
from agents.errors import DataError, ExitStatus, UsageError
from agents.mapping import Mapper, RequestShape, Sleep, response_formats
from agents.results import MERGE_STRATEGIES, OUTPUT_FORMATS, Interpreter, Merger
from agents.scheduler import CircuitBreaker, Outcome, Scheduler
from agents.template import Template

PROG = "agents-map"

DESCRIPTION = """\
Fill a prompt from each JSON Lines record on stdin, call an OpenAI-compatible chat API for it,
and write one record per input record to stdout: the record with its result, or an error record.

examples:
  agents-read words.csv | agents-map --prompt 'Translate to French: {word}' | agents-write out.csv
  agents-map -p prompt.txt -j 50 --output-format json < words.jsonl > results.jsonl
  agents-map -p extract.txt --output-format structured --schema person.json --merge update
"""

DEFAULTS = {
    "model": "gpt-4o-mini",
    "jobs": 10,
    "timeout": 60.0,
    "max_retries": 3,
    "retry_delay": 1.0,
    "max_reasks": 2,
    "grace": 30.0,
}


def build_parser(streams: Streams) -> Parser:
    parser = Parser(prog=PROG, description=DESCRIPTION, epilog=EXIT_STATUS_EPILOG, streams=streams)
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
        "--system", metavar="TEXT", help="a system prompt (a template too), given inline"
    )
    prompt.add_argument("--system-file", metavar="FILE", help="the system prompt, read from FILE")
    model = parser.add_argument_group("model and endpoint")
    model.add_argument(
        "-m",
        "--model",
        default=DEFAULTS["model"],
        metavar="NAME",
        help=f"model name (default: {DEFAULTS['model']})",
    )
    model.add_argument(
        "--base-url",
        metavar="URL",
        help=f"the API's base URL (default: $OPENAI_BASE_URL, else {DEFAULT_BASE_URL})",
    )
    model.add_argument(
        "--api-key-env",
        default="OPENAI_API_KEY",
        metavar="NAME",
        help="the environment variable that holds the API key "
        "(default: OPENAI_API_KEY); keys are never taken from flags",
    )
    model.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="an extra HTTP header for every request (repeatable)",
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
        default=DEFAULTS["timeout"],
        metavar="SECONDS",
        help=f"time limit of one request (default: {DEFAULTS['timeout']:g})",
    )
    model.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="another request parameter, its value as JSON, e.g. top_p=0.9 or "
        "'stop=[\"\\n\"]' (repeatable)",
    )
    processing = parser.add_argument_group("processing")
    processing.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=DEFAULTS["jobs"],
        metavar="N",
        help=f"requests in flight at once; 1 is sequential (default: {DEFAULTS['jobs']})",
    )
    processing.add_argument(
        "-k",
        "--keep-order",
        action="store_true",
        help="write results in input order (default: as they complete)",
    )
    processing.add_argument(
        "--max-retries",
        type=int,
        default=DEFAULTS["max_retries"],
        metavar="N",
        help=f"retries of a request after a retryable error (429, 5xx, "
        f"timeout, dropped connection) (default: "
        f"{DEFAULTS['max_retries']})",
    )
    processing.add_argument(
        "--retry-delay",
        type=float,
        default=DEFAULTS["retry_delay"],
        metavar="SECONDS",
        help=f"the first backoff step, doubled each retry, with jitter; a "
        f"server's Retry-After is waited for when longer "
        f"(default: {DEFAULTS['retry_delay']:g})",
    )
    processing.add_argument(
        "--grace",
        type=float,
        default=DEFAULTS["grace"],
        metavar="SECONDS",
        help=f"after Ctrl-C, how long requests in flight may finish "
        f"(default: {DEFAULTS['grace']:g})",
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--output-format",
        choices=OUTPUT_FORMATS,
        default="text",
        help="text: the answer as it is; json: the answer parsed as JSON; "
        "structured: parsed and validated against --schema (default: text)",
    )
    output.add_argument(
        "--schema",
        metavar="FILE",
        help="a JSON Schema for --output-format structured, also sent to the "
        "server as response_format",
    )
    output.add_argument(
        "--merge",
        choices=MERGE_STRATEGIES,
        default="extend",
        help="extend: the record plus the result under --field; update: an "
        "object result's keys merged into the record; replace: the ID "
        "and the result only (default: extend)",
    )
    output.add_argument(
        "--field",
        default="result",
        metavar="NAME",
        help="the key that holds the result (default: result)",
    )
    output.add_argument(
        "--max-reasks",
        type=int,
        default=DEFAULTS["max_reasks"],
        metavar="N",
        help=f"times an answer that does not parse or validate is asked again, "
        f"apart from retries (default: {DEFAULTS['max_reasks']})",
    )
    output.add_argument(
        "--errors",
        metavar="FILE",
        help="append error records to FILE instead of stdout (default: stdout, "
        "so that the output holds every ID and a rerun retries failures)",
    )
    return parser


@dataclass
class Job:
    endpoint: Endpoint
    mapper_args: dict[str, Any]
    jobs: int
    keep_order: bool
    grace: float
    errors: str | None


def _read_text(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as stream:
            return stream.read()
    except FileNotFoundError:
        raise UsageError(f"{what} {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"{what} {path}: cannot read it: {error}") from None


def _positive(value: int, flag: str, minimum: int = 1) -> int:
    if value < minimum:
        raise UsageError(f"{flag} must be at least {minimum}, not {value}")
    return value


def _params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if args.temperature is not None:
        params["temperature"] = args.temperature
    if args.max_tokens is not None:
        params["max_tokens"] = _positive(args.max_tokens, "--max-tokens")
    if args.max_completion_tokens is not None:
        params["max_completion_tokens"] = _positive(
            args.max_completion_tokens, "--max-completion-tokens"
        )
    if args.seed is not None:
        params["seed"] = args.seed
    for item in args.param:
        key, equals, raw = item.partition("=")
        if not equals or not key:
            raise UsageError(f"--param takes KEY=JSON, not {item!r}")
        try:
            params[key.strip()] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UsageError(
                f"--param {key}: {raw!r} is not JSON", "quote strings: --param 'user=\"me\"'"
            ) from None
    return params


def _headers(items: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for item in items:
        name, colon, value = item.partition(":")
        if not colon or not name.strip():
            raise UsageError(f"--header takes 'NAME: VALUE', not {item!r}")
        headers[name.strip()] = value.strip()
    return headers


def _endpoint(args: argparse.Namespace) -> Endpoint:
    key = os.environ.get(args.api_key_env) or None
    base_url = args.base_url or os.environ.get("OPENAI_BASE_URL") or None
    if key is None and base_url is None:
        raise UsageError(
            f"no API key and no endpoint: ${args.api_key_env} is not set and no --base-url "
            "was given",
            f"set {args.api_key_env} for OpenAI, or point --base-url (or OPENAI_BASE_URL) at "
            "an OpenAI-compatible server, such as the local model (see the README)",
        )
    if args.timeout <= 0:
        raise UsageError(f"--timeout must be positive, not {args.timeout:g}")
    return Endpoint(base_url or DEFAULT_BASE_URL, key, _headers(args.header), args.timeout)


def configure(args: argparse.Namespace) -> Job:
    if (args.prompt_file is None) == (args.prompt is None):
        raise UsageError("give the prompt with -p FILE or --prompt TEXT (one of them)")
    source = args.prompt if args.prompt is not None else _read_text(args.prompt_file, "prompt")
    if args.system is not None and args.system_file is not None:
        raise UsageError("give the system prompt with --system or --system-file, not both")
    system_text = (
        args.system
        if args.system is not None
        else _read_text(args.system_file, "system prompt")
        if args.system_file
        else None
    )
    schema: dict[str, Any] | None = None
    if args.schema is not None:
        try:
            schema = orjson.loads(_read_text(args.schema, "schema"))
        except orjson.JSONDecodeError as error:
            raise UsageError(f"schema {args.schema}: not valid JSON ({error})") from None
    if args.output_format == "structured" and schema is None:
        raise UsageError("--output-format structured needs --schema FILE")
    if schema is not None and args.output_format != "structured":
        raise UsageError("--schema is for --output-format structured")
    try:
        interpreter = Interpreter(args.output_format, schema)
    except Exception as error:  # jsonschema's SchemaError
        raise UsageError(
            f"schema {args.schema}: not a valid JSON Schema: {getattr(error, 'message', error)}"
        ) from None
    _positive(args.jobs, "--jobs")
    _positive(args.max_retries, "--max-retries", 0)
    _positive(args.max_reasks, "--max-reasks", 0)
    return Job(
        endpoint=_endpoint(args),
        mapper_args={
            "shape": RequestShape(args.model, _params(args)),
            "template": Template.parse(source),
            "system": Template.parse(system_text) if system_text is not None else None,
            "interpreter": interpreter,
            "merger": Merger(args.merge, args.field),
            "max_retries": args.max_retries,
            "retry_delay": max(0.0, args.retry_delay),
            "max_reasks": args.max_reasks,
            "response_formats": response_formats(args.output_format, schema),
        },
        jobs=args.jobs,
        keep_order=args.keep_order,
        grace=max(0.0, args.grace),
        errors=args.errors,
    )


async def _run_job(
    job: Job, streams: Streams, reporter: Reporter, sleep: Sleep, errors_out: BinaryIO | None
) -> tuple[Outcome, Mapper]:
    client = Client(job.endpoint, job.jobs)
    try:
        mapper = Mapper(client, sleep=sleep, warn=reporter.warning, **job.mapper_args)

        def bad(error: DataError) -> None:
            reporter.warning(f"{error.message} (skipped)")

        scheduler = Scheduler(
            mapper.process,
            streams.stdout,
            jobs=job.jobs,
            keep_order=job.keep_order,
            errors_out=errors_out,
            breaker=CircuitBreaker(),
            grace=job.grace,
            bad=bad,
        )
        outcome = await scheduler.run(streams.stdin)
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
        return outcome, mapper
    finally:
        await client.close()


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
    job = configure(args)
    errors_out: BinaryIO | None = None
    if job.errors:
        try:
            errors_out = open(job.errors, "ab")
        except OSError as error:
            raise UsageError(f"--errors {job.errors}: cannot write: {error.strerror}") from None
    try:
        outcome, mapper = _event_loop().run_until_complete(
            _run_job(job, streams, reporter, sleep or asyncio.sleep, errors_out)
        )
    finally:
        if errors_out is not None:
            errors_out.close()
    return _finish(outcome, mapper, reporter)


def _event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        return asyncio.new_event_loop()


def _finish(outcome: Outcome, mapper: Mapper, reporter: Reporter) -> int:
    if outcome.broken_pipe:
        raise BrokenPipeError
    counters = mapper.counters
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
        return int(
            ExitStatus.INTERRUPTED if outcome.signal == signal.SIGINT else ExitStatus.TERMINATED
        )
    if outcome.failed:
        kinds = ", ".join(f"{kind}: {count}" for kind, count in sorted(counters.errors.items()))
        reporter.warning(
            f"{outcome.failed} of {outcome.failed + outcome.written} records "
            f"failed ({kinds}); their error records are in the output"
        )
        return int(ExitStatus.PARTIAL)
    return int(ExitStatus.OK)


def entry_point() -> None:
    exit_with(main(sys.argv[1:]))
