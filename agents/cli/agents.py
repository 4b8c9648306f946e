"""agents: the design document's one-command interface, on the same library as the filters.

``agents process INPUT OUTPUT`` reads, maps and writes with resume built in (see
:mod:`agents.process`); ``agents resume OUTPUT`` carries on with the settings recorded beside it;
``agents cache info|prune`` looks after the response cache (:mod:`agents.cli.cache`).
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
import time
import urllib.parse
from collections.abc import Sequence
from itertools import islice
from typing import Any

from agents.cli import cache, flags, watch
from agents.cli._run import EXIT_STATUS_EPILOG, Parser, Reporter, Streams, exit_with, run
from agents.cli.map import finish, show_dry_run, side_outputs
from agents.cli.map_options import add_map_options
from agents.cli.read import shard
from agents.contract.codec import encode
from agents.errors import DataError, ExitStatus, UsageError
from agents.formats import resolve
from agents.formats._options import ReadOptions, WriteOptions, raise_bad
from agents.formats.read import Selection, read_records
from agents.map.ending import Ending
from agents.map.job import Job, build, merge
from agents.map.record import Sleep
from agents.map.run import Telling
from agents.process import (
    BatchProcessed,
    Source,
    load_settings,
    output_location,
    process,
    render,
    save_settings,
    settings_file,
    work_file,
)

PROG = "agents"

DESCRIPTION = """\
Run a prompt over every record of INPUT and write the results to OUTPUT, in one command that
resumes: run it again (or 'agents resume OUTPUT') after an interruption and it finishes the job,
paying again only for what was in flight. The filters agents-read, agents-map and agents-write
do the same work as a pipeline.

examples:
  agents process input.csv output.csv --prompt "Translate '{text}' to Spanish"
  agents process input.csv output.csv --config job.yaml
  agents process "sqlite://data.db?query=SELECT * FROM words" out.jsonl -p prompt.txt
  agents process input.csv output.csv --config job.yaml --dry-run --limit 5
  agents resume output.csv
  agents cache info
  agents cache prune --older-than 30d --max-size 1G
"""

#: Options whose values are files: recorded as absolute paths for agents resume.
PATH_OPTIONS = (
    "config",
    "prompt_file",
    "system_file",
    "schema",
    "errors",
    "stats",
    "status",
    "log_file",
    "cache",
)


def build_parser(streams: Streams) -> Parser:
    parser = Parser(prog=PROG, description=DESCRIPTION, epilog=EXIT_STATUS_EPILOG, streams=streams)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    job = commands.add_parser(
        "process",
        help="read INPUT, run the prompt over every record, write OUTPUT (resumable)",
        description=DESCRIPTION,
        epilog=EXIT_STATUS_EPILOG,
        streams=streams,
    )
    job.add_argument("input", metavar="INPUT", help="any agents-read source, or - for stdin")
    job.add_argument(
        "output", metavar="OUTPUT", help="any agents-write target file (CSV, JSON, SQLite, ...)"
    )
    add_map_options(job)
    source = job.add_argument_group("reading INPUT (as agents-read)")
    flags.add_format(source, "input")
    flags.add_id(source)
    source.add_argument(
        "--shard", type=shard, metavar="K/N", help="keep only shard K of N (default: all)"
    )
    flags.add_encoding(source)
    flags.add_delimiter(source)
    source.add_argument(
        "--no-header", action="store_true", help="the first CSV row is data (default: a header)"
    )
    flags.add_columns(source, "CSV column names instead of the header row (default: the header)")
    source.add_argument(
        "--key", metavar="PATH", help="JSON: dotted path to the records' array (default: the top)"
    )
    source.add_argument(
        "--query", metavar="SQL", help="SQLite: a SELECT whose rows are the records"
    )
    flags.add_table(source, "SQLite: the table to read (default: the only one)")
    resume = commands.add_parser(
        "resume",
        help="carry on with OUTPUT's job, with the settings recorded beside it",
        description="Carry on with the job that 'agents process' started for OUTPUT.",
        epilog=EXIT_STATUS_EPILOG,
        streams=streams,
    )
    resume.add_argument("output", metavar="OUTPUT", help="the OUTPUT of an agents process run")
    cache.add_parser(commands, streams, EXIT_STATUS_EPILOG)
    watch.add_parser(commands, streams, EXIT_STATUS_EPILOG)
    return parser


def main(
    argv: Sequence[str] | None = None, streams: Streams | None = None, sleep: Sleep | None = None
) -> int:
    streams = streams or Streams()
    ending = Ending()
    status = run(PROG, lambda reporter: _agents(argv, streams, reporter, sleep, ending), streams)
    ending.finish(status)
    return status


def _agents(
    argv: Sequence[str] | None,
    streams: Streams,
    reporter: Reporter,
    sleep: Sleep | None,
    ending: Ending,
) -> int:
    args = vars(build_parser(streams).parse_args(argv))
    command = args.pop("command")
    if command == "cache":
        return cache.run(args, streams, reporter)
    if command == "watch":
        return watch.run(args, streams, reporter)
    if command == "resume":
        output = output_location(args["output"])
        args = dict(load_settings(output)["arguments"])
        if args["input"] == "-":
            raise UsageError(
                f"{output.path}: the job read standard input, which cannot be read again",
                "run 'agents process - OUTPUT ...' again with the same input",
            )
        reporter.info(f"resuming the job from {args['input']} into {output.path}")
    return _process(args, streams, reporter, sleep, ending)


def _process(
    args: dict[str, Any],
    streams: Streams,
    reporter: Reporter,
    sleep: Sleep | None,
    ending: Ending,
) -> int:
    output = output_location(args["output"])
    settings = _absolute(args)
    location = resolve(args["input"], args.pop("format"), default="jsonl")
    source = Source(
        location,
        ReadOptions(
            encoding=args.pop("encoding"),
            delimiter=args.pop("delimiter"),
            no_header=args.pop("no_header"),
            columns=args.pop("columns"),
            key=args.pop("key"),
            query=args.pop("query") or location.query,
            table=args.pop("table") or location.table,
        ),
        Selection(id_field=args.pop("id_field"), shard=_shard_of(args.pop("shard"))),
    )
    if args.get("resume") is not None:
        raise UsageError(
            "agents process resumes by itself, from the work file beside OUTPUT",
            "drop --resume (it is for agents-map in a pipeline)",
        )
    recorded = {key: value for key, value in args.items() if key not in ("input", "output")}
    map_flags = {**recorded, "resume": work_file(output)}
    job = build(merge(map_flags, map_flags.pop("config")))
    from agents.cli.batch import check_batch_options

    check_batch_options(job, reporter)
    if job.options.dry_run:
        return _dry_run(job, source, streams, reporter)
    # choices for this run, not for every resume
    for once in ("force_resume", "dry_run", "batch_detach", "batch_cancel"):
        settings.pop(once, None)
    status_file = ending.start(
        job.options, job.fingerprint, job.shape.model, PROG, reporter.warning,
        status=not job.options.batch,
        files={"OUTPUT": output.path, "its settings": settings_file(output)},
    )  # fmt: skip
    telling = Telling(reporter.warning, reporter.info, streams.stderr, status_file)
    started = time.monotonic()
    with side_outputs(job, PROG) as errors_out:
        done = process(
            source,
            output,
            job,
            streams.stdin,
            telling=telling,
            sleep=sleep or asyncio.sleep,
            errors_out=errors_out,
            when_locked=lambda: save_settings(output, {"arguments": settings}),
        )
    seconds = time.monotonic() - started
    if isinstance(done, BatchProcessed):
        from agents.cli.batch import finish_batch

        status = finish_batch(job, done.outcome, reporter, seconds, ending)
    else:
        status = finish(job, done.outcome, done.mapper, reporter, seconds, ending)
    if status in (ExitStatus.OK, ExitStatus.PARTIAL):
        written, failed = render(output, WriteOptions(table=output.table, field=job.options.field))
        if not job.options.quiet:
            reporter.info(f"{written:,} records written to {output.path}")
        if failed:
            records = "record" if failed == 1 else "records"
            reporter.warning(
                f"{failed:,} error {records} kept in {work_file(output)}, not in the text output"
            )
    else:
        reporter.info(f"{output.path} is not written yet: run the same command again to resume")
    return status


def _shard_of(value: Any) -> tuple[int, int] | None:
    return None if value is None else (int(value[0]), int(value[1]))


def _dry_run(job: Job, source: Source, streams: Streams, reporter: Reporter) -> int:
    """--dry-run over the input's records (the first --limit of them); no file is created."""
    records = read_records(
        source.location, source.options, source.selection, streams.stdin, raise_bad
    )
    wanted = islice(records, job.options.limit) if job.options.limit is not None else records
    lines = io.BytesIO(b"".join(map(encode, wanted)))
    quiet = Streams(stdin=lines, stdout=streams.stdout, stderr=streams.stderr)

    def bad(error: DataError) -> None:
        reporter.warning(f"{error.message} (skipped)")

    if job.options.batch:
        from agents.cli.batch import show_batch_dry_run

        return show_batch_dry_run(job, quiet, reporter, bad)
    return show_dry_run(job, quiet, reporter, bad)


def _absolute(arguments: dict[str, Any]) -> dict[str, Any]:
    """File paths made absolute, so agents resume works from any folder."""
    fixed = dict(arguments)
    for name in (*PATH_OPTIONS, "output", "input"):
        value = fixed.get(name)
        if isinstance(value, str) and value and value != "-":
            fixed[name] = absolute_spelling(value)
    return fixed


def absolute_spelling(spelling: str) -> str:
    """A path, or the path inside a sqlite:// URL, made absolute (the rest kept as it is)."""
    if not spelling.startswith("sqlite://"):
        absolute = os.path.abspath(spelling)
        folder = spelling.endswith(os.sep) and absolute != os.sep  # (--status DIR/ says "a folder")
        return absolute + os.sep if folder else absolute
    parts = urllib.parse.urlsplit(spelling)
    path = os.path.abspath(urllib.parse.unquote(parts.netloc + parts.path))
    query = f"?{parts.query}" if parts.query else ""
    return f"sqlite://{urllib.parse.quote(path)}{query}"


def entry_point() -> None:
    exit_with(main(sys.argv[1:]))
