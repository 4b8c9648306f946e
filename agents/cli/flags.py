"""The flags that more than one command takes, each declared once: its name, value and help.

A command passes what differs for it (input or output, what a bad line is, what a name is for);
the rest is the same everywhere. Checks that need the format (a delimiter of one character) stay
with the format, in the library, so that they hold for the Python API too.
"""

from __future__ import annotations

import argparse
from typing import Literal

from agents.errors import ExitStatus
from agents.formats import FORMATS

#: An argument parser or one of its groups: both take ``add_argument``.
Adder = argparse.ArgumentParser | argparse._ArgumentGroup


def names(text: str) -> list[str]:
    """``--columns A, B,C``: the names between commas, blanks around them dropped."""
    return [name.strip() for name in text.split(",")]


def add_format(parser: Adder, direction: Literal["input", "output"]) -> None:
    """``-f/--format``; for ``-`` (stdin or stdout) the default is jsonl."""
    stream = "stdin" if direction == "input" else "stdout"
    parser.add_argument(
        "-f",
        "--format",
        choices=FORMATS,
        metavar="FORMAT",
        help=f"{direction} format: {', '.join(FORMATS)} "
        f"(default: from the extension; jsonl for {stream})",
    )


def add_skip_bad(parser: Adder, bad: str) -> None:
    """``--skip-bad``; ``bad`` says what is skipped, e.g. "a bad row or line"."""
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help=f"report {bad} on stderr and go on (exit {int(ExitStatus.PARTIAL)} at the end); "
        f"default: stop with exit {int(ExitStatus.FAILURE)}",
    )


def add_delimiter(parser: Adder) -> None:
    """``-d/--delimiter`` of CSV and TSV (checked by the format: one character, or \\t or tab)."""
    parser.add_argument(
        "-d",
        "--delimiter",
        metavar="CHAR",
        help="field delimiter (default: ',' for CSV, tab for TSV; '\\t' for tab)",
    )


def add_columns(parser: Adder, purpose: str) -> None:
    """``--columns A,B,…``; ``purpose`` says what the names are for in this command."""
    parser.add_argument("--columns", type=names, metavar="A,B,…", help=purpose)


def add_table(parser: Adder, purpose: str) -> None:
    """``-t/--table NAME`` of SQLite; ``purpose`` says what the table is for in this command."""
    parser.add_argument("-t", "--table", metavar="NAME", help=purpose)


def add_id(parser: Adder) -> None:
    """``--id FIELD``: a field of the source as each record's ID."""
    parser.add_argument(
        "--id",
        metavar="FIELD",
        dest="id_field",
        help="use FIELD as each record's ID (default: an existing _id, else "
        "the row or line number, or the SQLite primary key or rowid)",
    )


def add_encoding(parser: Adder) -> None:
    """``--encoding NAME``: the input's text encoding."""
    parser.add_argument(
        "--encoding",
        default="utf-8",
        metavar="NAME",
        help="text encoding of the input (default: utf-8; a BOM is skipped)",
    )
