"""The formats agents-read and agents-write understand, and how one is chosen.

One module per format holds its reader and its writer; this registry picks the format from
``--format``, a ``sqlite://`` URL or the file extension (``.gz`` looked through).
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from agents.errors import SourceError, UsageError

FORMATS = ("csv", "tsv", "json", "jsonl", "text", "sqlite")

EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".txt": "text",
    ".text": "text",
    ".db": "sqlite",
    ".sqlite": "sqlite",
    ".sqlite3": "sqlite",
}

FORMAT_HINT = f"name it with --format ({', '.join(FORMATS)})"


@dataclass(frozen=True)
class Location:
    """Where data lives: a path (or ``-``), its format, and what a sqlite:// URL said."""

    path: str
    format: str
    query: str | None = None
    table: str | None = None


def normalise_format(name: str) -> str:
    lowered = name.lower()
    if lowered not in FORMATS:
        raise UsageError(f"unknown format {name!r}", f"choose one of {', '.join(FORMATS)}")
    return lowered


def resolve(location: str, explicit: str | None, *, default: str | None = None) -> Location:
    """The format of ``location`` from --format, a sqlite:// URL, or its extension.

    ``default`` is used for stdin/stdout (``-``) when no --format is given.
    """
    if location.startswith("sqlite://"):
        parsed = urllib.parse.urlsplit(location)
        path = urllib.parse.unquote(parsed.netloc + parsed.path)
        params = urllib.parse.parse_qs(parsed.query)
        if not path:
            raise UsageError(
                f"{location}: the URL names no database file",
                "write sqlite://PATH?table=NAME or sqlite://PATH?query=SELECT…",
            )
        return Location(
            path,
            "sqlite",
            query=params.get("query", [None])[0],
            table=params.get("table", [None])[0],
        )
    if explicit:
        return Location(location, normalise_format(explicit))
    if location == "-":
        if default is None:
            raise UsageError("cannot tell the format of stdin", FORMAT_HINT)
        return Location(location, default)
    name = location.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for extension, fmt in EXTENSIONS.items():
        if name.endswith(extension):
            return Location(location, fmt)
    raise SourceError(f"{location}: cannot tell the format from the file name", FORMAT_HINT)
