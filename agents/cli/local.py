"""agents-local: the embedded local model, one shared server for every agents-map process."""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Sequence

from agents.cli._run import EXIT_STATUS_EPILOG, Parser, Reporter, Streams, exit_with, run
from agents.errors import ExitStatus, UsageError
from agents.local import command as local_command
from agents.local import server as local_model
from agents.local.server import DEFAULT_CONTEXT, DEFAULT_PARALLEL

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
            metavar="N",
            help=f"requests the server works on at once (default: {DEFAULT_PARALLEL}; a running "
            "server is used as it is when this is not given, refused when it differs)",
        )
        sub.add_argument(
            "--context",
            type=int,
            metavar="TOKENS",
            help=f"context size of each of those slots (default: {DEFAULT_CONTEXT}; as for "
            "--parallel)",
        )
    run_command.add_argument(
        "argv", nargs="+", metavar="COMMAND", help="the command and its arguments (after --)"
    )
    commands.add_parser("stop", help="stop the server (only the process that is still it)")
    commands.add_parser("url", help="print the URL of the running server (exit 1 if none)")
    return parser


def main(argv: Sequence[str] | None = None, streams: Streams | None = None) -> int:
    streams = streams or Streams()
    return run(PROG, lambda reporter: _local(argv, streams, reporter), streams)


def _say(streams: Streams, text: str) -> None:
    streams.stdout.write(text.encode() + b"\n")
    streams.stdout.flush()


def _local(argv: Sequence[str] | None, streams: Streams, reporter: Reporter) -> int:
    args = build_parser(streams).parse_args(argv)
    if args.command == "url":
        state = local_model.current()
        if state is None:
            reporter.error("the local model is not running", "start it: agents-local start")
            return int(ExitStatus.FAILURE)
        _say(streams, state.url)
        return int(ExitStatus.OK)
    if args.command == "stop":
        _stop(reporter)
        return int(ExitStatus.OK)
    if (args.parallel is not None and args.parallel < 1) or (
        args.context is not None and args.context < 256
    ):
        raise UsageError("--parallel must be at least 1 and --context at least 256")
    if args.command == "start":
        state, started = local_model.start(args.parallel, args.context)
        local_model.adopt()  # started or found, it is the user's now: runs leave it running
        if started:
            reporter.info(f"started the local model at {state.url} (log: {local_model.log_file()})")
        _say(streams, state.url)
        return int(ExitStatus.OK)
    try:
        return _run(args.argv, args.parallel, args.context, reporter)
    except local_command.CannotRun as error:
        reporter.error(error.message, error.hint)
        return error.exit_status


def _run(argv: list[str], parallel: int | None, context: int | None, reporter: Reporter) -> int:
    """``run``: COMMAND beside the server; stopped after it by the last run using a server that
    a run started (see :class:`agents.local.server.RunUse`)."""
    program = local_command.find(argv[0], os.environ.get("PATH", os.defpath))
    use = local_model.RunUse()
    state, started = use.begin(parallel, context)
    name = os.path.basename(argv[0])
    then = " before stopping the local model" if started else ""

    def notice(signum: int) -> None:
        reporter.info(f"{SIGNAL_NAMES.get(signum, 'signal')}: waiting for {name} to exit{then}")

    # The relay covers the stop too: a second Ctrl-C must not leave the server running.
    with local_command.Relay(notice) as relay:
        try:
            return relay.run(argv, program, {**os.environ, "OPENAI_BASE_URL": state.url})
        finally:
            use.end()  # the last run out stops a server that a run started


SIGNAL_NAMES: dict[int, str] = {
    signal.SIGINT: "interrupted",
    signal.SIGTERM: "terminated",
    signal.SIGHUP: "hung up",
}


def _stop(reporter: Reporter) -> None:
    done, state = local_model.stop()
    pid = state.pid if state is not None else None
    if done is local_model.Stop.STOPPED:
        reporter.info(f"stopped the local model (process {pid})")
    elif done is local_model.Stop.KILLED:
        reporter.info(
            f"killed the local model (process {pid}): it did not stop within "
            f"{local_model.STOP_WAIT:g}s of SIGTERM"
        )
    elif done is local_model.Stop.NOT_RUNNING:
        reporter.info("the local model was not running")
    elif done is local_model.Stop.EXITED:
        reporter.info(
            f"the local model was not running (its process {pid} had exited); "
            "removed its state file"
        )
    else:
        reporter.warning(
            f"the state file named process {pid}, which is no longer the local model (the PID "
            "was given to another process); left that process alone and removed the state file"
        )


def entry_point() -> None:
    exit_with(main(sys.argv[1:]))
