"""agents-write: JSON Lines on stdin into CSV, TSV, JSON, JSONL, text or SQLite."""

from __future__ import annotations

import argparse
import os
import signal
import stat
import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import BinaryIO

from agents.cli import flags
from agents.cli._run import (
    EXIT_STATUS_EPILOG,
    Parser,
    Reporter,
    Streams,
    exit_with,
    handling,
    run,
)
from agents.done.lock import WriterLock
from agents.done.rules import ON_DUPLICATE
from agents.done.targets import LedgerTarget, open_target
from agents.errors import DataError, ExitStatus, Terminated, UsageError
from agents.formats import Location, resolve
from agents.formats._options import WriteOptions

PROG = "agents-write"

DESCRIPTION = """\
Write the JSON Lines records on stdin to TARGET, in the format its extension names.

examples:
  agents-read words.csv | agents-write words.json
  agents-map -p prompt.txt < words.jsonl | agents-write --append out.csv
  agents-write results.db --table results < results.jsonl
"""


def build_parser(streams: Streams) -> Parser:
    parser = Parser(prog=PROG, description=DESCRIPTION, epilog=EXIT_STATUS_EPILOG, streams=streams)
    parser.add_argument(
        "target", metavar="TARGET", help="file to write, sqlite://PATH?table=NAME, or - for stdout"
    )
    flags.add_format(parser, "output")
    parser.add_argument(
        "-a",
        "--append",
        action="store_true",
        help="add to an existing target as records arrive: skip IDs it holds "
        "as successes, replace its error records, repair a torn last line "
        "(default: replace the target atomically at the end)",
    )
    parser.add_argument(
        "--wait",
        action="store_true",
        help="when another agents-write is writing the same target, wait for it to finish "
        "(default: fail at once, naming its pid)",
    )
    flags.add_skip_bad(parser, "an input line that is not a JSON object")
    parser.add_argument(
        "--on-duplicate",
        choices=ON_DUPLICATE,
        default="keep-first",
        help="an ID that comes twice in the input, where the target keys records by ID "
        "(--append, SQLite): keep-first or keep-last (named on stderr, exit 3), or error "
        "(stop, exit 1); default: keep-first",
    )
    csv = parser.add_argument_group("CSV and TSV")
    flags.add_columns(
        csv, "write exactly these columns in this order (default: every key, in first-seen order)"
    )
    flags.add_delimiter(csv)
    text = parser.add_argument_group("text")
    text.add_argument(
        "--field",
        default="content",
        metavar="NAME",
        help="the field written as each line of a text target (default: content)",
    )
    sqlite = parser.add_argument_group("SQLite")
    flags.add_table(sqlite, "table to create or upsert into (default: records)")
    return parser


def main(argv: Sequence[str] | None = None, streams: Streams | None = None) -> int:
    streams = streams or Streams()
    return run(PROG, lambda reporter: _write(argv, streams, reporter), streams)


def _write(argv: Sequence[str] | None, streams: Streams, reporter: Reporter) -> int:
    args = build_parser(streams).parse_args(argv)
    location = resolve(args.target, args.format, default="jsonl")
    if location.format != "sqlite" and args.table:
        raise UsageError("--table is for SQLite targets")
    options = WriteOptions(
        columns=args.columns,
        delimiter=args.delimiter,
        field=args.field,
        table=args.table or location.table,
        append=args.append,
        on_duplicate=args.on_duplicate,
    )
    lock = WriterLock(location.path, wait=args.wait) if location.path != "-" else None
    if lock is not None:
        lock.acquire()
    try:
        return _write_to(location, options, args, streams, reporter)
    finally:
        if lock is not None:
            lock.release()


def _write_to(
    location: Location,
    options: WriteOptions,
    args: argparse.Namespace,
    streams: Streams,
    reporter: Reporter,
) -> int:
    # The first Ctrl-C or SIGTERM is held from here on, before the (possibly long) opening of
    # an existing output, so that what upstream already paid for is still drained and kept.
    drain = _Drain(
        location.path != "-" and (options.append or location.format == "sqlite"), streams.stdin
    )
    with drain.signals():
        target = open_target(location, options, streams.stdout)
    if target.repaired_bytes:
        reporter.warning(
            f"{location.path}: removed a torn last line "
            f"({target.repaired_bytes} bytes) left by an earlier run"
        )
    skipped_lines = 0

    def bad(error: DataError) -> None:
        nonlocal skipped_lines
        if not args.skip_bad:
            raise error
        skipped_lines += 1
        reporter.warning(f"{error.message} (skipped)")

    try:
        with drain.signals():
            target.consume(streams.stdin, "<stdin>", bad)
    except BaseException:
        target.abort()
        raise
    target.commit()
    if args.append and target.skipped:
        records = "record" if target.skipped == 1 else "records"
        reporter.info(f"skipped {target.skipped} {records} already in {location.path}")
    if drain.interrupted:
        reporter.info(f"interrupted: {target.written} records written to {location.path}")
        if args.append:
            reporter.info("run the same command again to resume")
        return int(drain.status)
    status = ExitStatus.OK
    if isinstance(target, LedgerTarget) and target.ledger.duplicates.count:
        which = "last" if args.on_duplicate == "keep-last" else "first"
        kept = f"the {which} record of each ID is kept"
        reporter.warning(target.ledger.duplicates.describe(kept))
        status = ExitStatus.PARTIAL
    if skipped_lines:
        reporter.warning(
            f"skipped {skipped_lines} bad input {'line' if skipped_lines == 1 else 'lines'}"
        )
        status = ExitStatus.PARTIAL
    return int(status)


class _Drain:
    """The first Ctrl-C or SIGTERM lets a durable target keep what is still coming down the pipe.

    In a pipeline the signal reaches every process; the writer keeps reading until its input
    ends so that results already paid for upstream are kept, then exits 130 (143 for SIGTERM).
    A second signal, or any when nothing would be gained (an atomic target, input that is not a
    pipe), stops at once.
    """

    def __init__(self, keeps_partial: bool, stdin: BinaryIO) -> None:
        self.signal: int | None = None
        self.keeps_partial = keeps_partial
        try:
            self.from_pipe = stat.S_ISFIFO(os.fstat(stdin.fileno()).st_mode)
        except (OSError, ValueError, AttributeError):
            self.from_pipe = False

    @property
    def interrupted(self) -> bool:
        return self.signal is not None

    @property
    def status(self) -> ExitStatus:
        return ExitStatus.TERMINATED if self.signal == signal.SIGTERM else ExitStatus.INTERRUPTED

    def _on_signal(self, signum: int, frame: object) -> None:
        if self.signal is not None or not (self.keeps_partial and self.from_pipe):
            if signum == signal.SIGTERM:
                raise Terminated
            raise KeyboardInterrupt
        self.signal = signum

    def signals(self) -> AbstractContextManager[None]:
        return handling(self._on_signal, signal.SIGINT, signal.SIGTERM)


def entry_point() -> None:
    exit_with(main(sys.argv[1:]))
