"""``agents watch PATH...``: one view of every process of a job that writes ``--status`` documents.

On a terminal the view is redrawn in place; otherwise one JSON line per interval. It exits when
every process it found has finished (or gone stale), with 0 when all finished with 0, or runs
until stopped with ``--follow``. ``--serve`` shows the same view as a local web page.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import orjson

from agents.cli._run import Reporter, Streams
from agents.watch.snapshot import Snapshot, take
from agents.watch.view import screen

#: How long every process must have been ended before the watcher exits, in seconds.
GRACE = 2.0


def positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def add_parser(commands: Any, streams: Streams, epilog: str) -> None:
    """The ``watch`` command, on ``agents``'s parser."""
    watch = commands.add_parser(
        "watch",
        help="one live view of the processes of a job run with --status",
        description=__doc__.split("\n\n")[0].replace("``", "'"),
        epilog=epilog,
        streams=streams,
    )
    watch.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="status files, folders of them (--status DIR/), or globs ('runs/*/status.json')",
    )
    watch.add_argument(
        "--interval",
        type=positive,
        default=1.0,
        metavar="SECONDS",
        help="how often the view is refreshed (default: 1)",
    )
    watch.add_argument(
        "--follow",
        action="store_true",
        help="keep watching after every process finished, for new ones (default: exit)",
    )
    watch.add_argument(
        "--serve",
        metavar="[HOST:]PORT",
        help="also show the view as a web page on http://HOST:PORT/ (default host: 127.0.0.1; "
        "elsewhere, the URL holds a token); runs until stopped, as with --follow",
    )


def run(args: dict[str, Any], streams: Streams, reporter: Reporter) -> int:
    paths: list[str] = args["paths"]
    interval: float = args["interval"]
    terminal = _is_terminal(streams.stdout)
    server = None
    if args.get("serve"):
        from agents.watch.serve import Server

        server = Server(args["serve"], paths, interval)
        reporter.say(f"watching on {server.url}")
    drawn, width = 0, 0
    ended_since: float | None = None
    try:
        while True:
            snapshot = take(paths)
            if terminal:
                drawn, width = _draw(streams, snapshot, paths, drawn, width)
            elif snapshot.jobs:
                streams.stdout.write(orjson.dumps(snapshot.document()) + b"\n")
                streams.stdout.flush()
            now = time.monotonic()
            ended_since = (ended_since or now) if snapshot.ended else None
            # Ended a while, not just now: the next process of the job may be on its way
            # (parallel -j 1 starts one as the one before ends).
            settled = ended_since is not None and now - ended_since >= max(GRACE, 2 * interval)
            if settled and not args["follow"] and server is None:
                return snapshot.exit_status()
            time.sleep(interval)
    finally:
        if server is not None:
            server.close()


def _draw(
    streams: Streams, snapshot: Snapshot, paths: list[str], drawn: int, before: int
) -> tuple[int, int]:
    """The view redrawn over the one before (``drawn`` lines at ``before`` columns): the lines
    and the width now. A terminal that changed width has rewrapped what was drawn, so the
    screen is cleared instead."""
    try:
        size = os.get_terminal_size(streams.stdout.fileno())
        width, height = max(1, size.columns - 1), max(1, size.lines - 1)
    except (OSError, ValueError, AttributeError):
        width, height = 79, 24
    lines = screen(snapshot, width, height, paths)
    if before and width != before:
        back = "\x1b[H\x1b[2J"
    else:
        back = (f"\x1b[{drawn}A" if drawn else "") + "\r\x1b[J"
    text = back + "\n".join(lines) + "\n"
    streams.stdout.write(text.encode())
    streams.stdout.flush()
    return len(lines), width


def _is_terminal(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError, OSError):
        return False


__all__ = ["add_parser", "run"]
