"""``agents cache info|prune [PATH]``: what a response cache holds, and forgetting part of it.

PATH defaults to the cache agents-map's ``--cache`` uses: ``AGENTS_CACHE``, else
``$XDG_CACHE_HOME/agents/responses.sqlite``.
"""

from __future__ import annotations

import argparse
import os
import re
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from agents.cli._run import Reporter, Streams
from agents.errors import AgentsError, UsageError
from agents.map.cache import CacheInfo, ResponseCache, default_path

_DURATION = re.compile(r"(\d+(?:\.\d*)?)\s*([smhdw]?)")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SIZE = re.compile(r"(\d+(?:\.\d*)?)\s*([kmgt]?)i?b?", re.IGNORECASE)
_BYTES = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def duration(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``2w``, ``3600`` (seconds)."""
    found = _DURATION.fullmatch(text.strip().lower())
    if not found:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration, e.g. 30d, 12h, 90m")
    return float(found[1]) * _SECONDS[found[2]]


def size(text: str) -> int:
    """``500M``, ``2G``, ``100k``, ``1048576`` (bytes); powers of 1024."""
    found = _SIZE.fullmatch(text.strip())
    if not found:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size, e.g. 500M, 2G")
    return int(float(found[1]) * _BYTES[found[2].lower()])


def add_parser(commands: Any, streams: Streams, epilog: str) -> None:
    """The ``cache`` command and its two subcommands, on ``agents``'s parser."""
    cache = commands.add_parser(
        "cache",
        help="what the response cache (agents-map --cache) holds; prune it",
        description=__doc__.split("\n\n")[0],
        epilog=epilog,
        streams=streams,
    )
    actions = cache.add_subparsers(dest="action", metavar="ACTION", required=True)
    where = "the cache file (default: $AGENTS_CACHE, else $XDG_CACHE_HOME/agents/responses.sqlite)"
    info = actions.add_parser(
        "info",
        help="entries, size, hits, oldest and newest answers",
        description="Show what the cache holds.",
        epilog=epilog,
        streams=streams,
    )
    info.add_argument("path", nargs="?", metavar="PATH", help=where)
    info.add_argument("--json", action="store_true", help="one JSON object on stdout")
    prune = actions.add_parser(
        "prune",
        help="forget answers not used lately, or the least recently used beyond a size",
        description="Forget answers not used for a while, or the least recently used ones "
        "beyond a size, then compact the file. Other processes may use it meanwhile.",
        epilog=epilog,
        streams=streams,
    )
    prune.add_argument("path", nargs="?", metavar="PATH", help=where)
    prune.add_argument(
        "--older-than",
        type=duration,
        metavar="DURATION",
        help="forget answers neither kept nor replayed for DURATION (30d, 12h, 90m)",
    )
    prune.add_argument(
        "--max-size",
        type=size,
        metavar="SIZE",
        help="then forget the least recently used answers until the rest take SIZE (500M, 2G)",
    )


def run(args: dict[str, Any], streams: Streams, reporter: Reporter) -> int:
    path = _path(args.get("path"))
    if args["action"] == "prune" and args["older_than"] is None and args["max_size"] is None:
        raise UsageError(
            "agents cache prune: say what to forget",
            hint=f"give --older-than DURATION and/or --max-size SIZE; to forget everything, "
            f"remove {path}",
        )
    cache = ResponseCache(
        path,
        create=False,
        writable=args["action"] != "info" or _may_write(path),
        name=str(path),
        hint="remove the file to start afresh (agents-map --cache makes a new one)",
    )
    cache.write_hint = "is the disk full? nothing was forgotten"
    if cache.unread_wal:
        reporter.warning(
            f"{path}: answers a writer has not folded into the file yet (its -wal file) are "
            "not counted: this user cannot write the cache, and reading them would need to"
        )
    try:
        return _act(args, cache, path, streams, reporter)
    except sqlite3.DatabaseError as error:
        raise AgentsError(
            f"{path}: cannot read the cache ({error})",
            hint="remove the file to start afresh (the next agents-map --cache makes a new one)",
        ) from None
    finally:
        cache.close()


def _act(
    args: dict[str, Any], cache: ResponseCache, path: Path, streams: Streams, reporter: Reporter
) -> int:
    """``info`` or ``prune`` on an open cache."""
    if args["action"] == "info":
        info = cache.info()
        if args["json"]:
            streams.stdout.write(orjson.dumps(_document(info), option=orjson.OPT_INDENT_2))
            streams.stdout.write(b"\n")
        else:
            streams.stdout.write("".join(f"{line}\n" for line in _lines(info)).encode())
        return 0
    before = cache.info()
    removed = cache.prune(args["older_than"], args["max_size"])
    after = cache.info()
    reporter.say(
        f"forgot {removed:,} of {before.entries:,} answers; {after.entries:,} kept, "
        f"{_bytes(before.file_bytes)} -> {_bytes(after.file_bytes)} ({path})"
    )
    return 0


def _may_write(path: Path) -> bool:
    """Whether ``info`` may open the cache as its writers do, and so read the answers still in
    its WAL (after a kill -9, all of a run's); one the user cannot write is read as it stands."""
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)


def _path(given: str | None) -> Path:
    if given:
        return Path(given).expanduser()
    from_environment = os.environ.get("AGENTS_CACHE")
    return Path(from_environment).expanduser() if from_environment else default_path()


def _document(info: CacheInfo) -> dict[str, Any]:
    return {
        "path": info.path,
        "entries": info.entries,
        "hits": info.hits,
        "oldest": _when(info.oldest),
        "newest": _when(info.newest),
        "last_used": _when(info.last_used),
        "content_bytes": info.content_bytes,
        "file_bytes": info.file_bytes,
    }


def _lines(info: CacheInfo) -> list[str]:
    now = time.time()
    return [
        f"path:       {info.path}",
        f"answers:    {info.entries:,}",
        f"hits:       {info.hits:,}",
        f"size:       {_bytes(info.file_bytes)} on disk, {_bytes(info.content_bytes)} of answers",
        f"oldest:     {_ago(info.oldest, now)}",
        f"newest:     {_ago(info.newest, now)}",
        f"last used:  {_ago(info.last_used, now)}",
    ]


def _when(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds")


def _ago(moment: float | None, now: float) -> str:
    if moment is None:
        return "-"
    from agents.map.progress import duration as spelled

    age = max(0.0, now - moment)
    return (
        f"{_when(moment)} ({f'{age / 86400:.0f} days' if age >= 2 * 86400 else spelled(age)} ago)"
    )


def _bytes(count: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"
