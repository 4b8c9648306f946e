"""agents-local: the embedded local model, one shared server for every agents-map process."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Sequence

from agents.cli._run import EXIT_STATUS_EPILOG, Parser, Reporter, Streams, exit_with, run
from agents.errors import ExitStatus, UsageError

PROG = "agents-local"

DESCRIPTION = """\
Run SmolLM2-135M-Instruct with llama.cpp's OpenAI-compatible server on a free loopback port,
once for every agents-map process that uses it. No API key, no download at run time.

examples:
  agents-local run -- sh -c 'agents-read w.csv | agents-map -p prompt.txt | agents-write out.csv'
  export OPENAI_BASE_URL=$(agents-local start)     # then use agents-map as usual
  agents-local stop
"""


def build_parser(streams: Streams) -> Parser:
    parser = Parser(prog=PROG, description=DESCRIPTION, epilog=EXIT_STATUS_EPILOG, streams=streams)
    # Subcommands are Parsers too, writing to the same streams.
    commands = parser.add_subparsers(  # type: ignore[call-overload]
        dest="command",
        metavar="COMMAND",
        required=True,
        parser_class=functools.partial(Parser, streams=streams),
    )
    start = commands.add_parser("start", help="start the server unless it runs; print its URL")
    run_command = commands.add_parser(
        "run",
        help="run COMMAND with OPENAI_BASE_URL pointing at the server, starting it if "
        "needed and stopping it afterwards if this call started it",
    )
    for sub in (start, run_command):
        sub.add_argument(
            "--parallel",
            type=int,
            default=4,
            metavar="N",
            help="requests the server works on at once (default: 4)",
        )
        sub.add_argument(
            "--context",
            type=int,
            default=4096,
            metavar="TOKENS",
            help="context size of each of those slots (default: 4096)",
        )
    run_command.add_argument(
        "argv", nargs="+", metavar="COMMAND", help="the command and its arguments (after --)"
    )
    commands.add_parser("stop", help="stop the server")
    commands.add_parser("url", help="print the URL of the running server (exit 1 if none)")
    return parser


def main(argv: Sequence[str] | None = None, streams: Streams | None = None) -> int:
    streams = streams or Streams()
    return run(PROG, lambda reporter: _local(argv, streams, reporter), streams)


def _say(streams: Streams, text: str) -> None:
    streams.stdout.write(text.encode() + b"\n")
    streams.stdout.flush()


def _local(argv: Sequence[str] | None, streams: Streams, reporter: Reporter) -> int:
    from agents.local import server as local_model

    args = build_parser(streams).parse_args(argv)
    if args.command == "url":
        state = local_model.current()
        if state is None:
            reporter.error("the local model is not running", "start it: agents-local start")
            return int(ExitStatus.FAILURE)
        _say(streams, state.url)
        return int(ExitStatus.OK)
    if args.command == "stop":
        if not local_model.stop():
            reporter.info("the local model was not running")
        return int(ExitStatus.OK)
    if args.parallel < 1 or args.context < 256:
        raise UsageError("--parallel must be at least 1 and --context at least 256")
    if args.command == "start":
        state, started = local_model.start(args.parallel, args.context)
        if started:
            reporter.info(f"started the local model at {state.url} (log: {local_model.log_file()})")
        _say(streams, state.url)
        return int(ExitStatus.OK)
    state, started = local_model.start(args.parallel, args.context)
    try:
        environment = {**os.environ, "OPENAI_BASE_URL": state.url}
        return subprocess.run(args.argv, env=environment, check=False).returncode
    finally:
        if started:
            local_model.stop()


def entry_point() -> None:
    exit_with(main(sys.argv[1:]))
