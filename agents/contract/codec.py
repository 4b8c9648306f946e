"""The line codec of the stream: one compact UTF-8 JSON object per line."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from typing import Any

import orjson

from agents.contract.ids import Record

#: One compact JSON line, newline included (a partial, so that it costs no Python frame).
encode: Callable[[Record], bytes] = functools.partial(
    orjson.dumps, option=orjson.OPT_APPEND_NEWLINE
)


# Integers beyond 64 bits ------------------------------------------------------------------------
#
# orjson reads an integer outside [-2**63, 2**64 - 1] as a float, silently losing digits, and
# cannot write one back. Such a number is kept exactly, as its decimal text (a string), and
# counted so that each command can say so once. Only text holding a run of 19 digits can hold
# one (2**63 has 19), so everything else keeps orjson's speed.

_SMALLEST = -(2**63)
_LARGEST = 2**64 - 1
_DIGITS_AS_ZEROS = bytes(48 if 48 <= byte <= 57 else 32 for byte in range(256))
_LONG_RUN = b"0" * 19
_LONG_DIGITS_TEXT = re.compile(r"\d{19}")


class _Counter:
    """How many integers beyond 64 bits were kept as text in this process."""

    kept = 0


BIG_INTEGERS = _Counter()


def _integer(text: str) -> int | str:
    value = int(text)
    if _SMALLEST <= value <= _LARGEST:
        return value
    BIG_INTEGERS.kept += 1
    return text


def may_hold_big_integers(data: bytes | str) -> bool:
    """Whether ``data`` has a run of 19 digits. For bytes, every digit becomes ``0`` and every
    other byte a space, and the run is searched for: two C loops, several times faster than a
    regular expression over the same bytes."""
    if isinstance(data, bytes):
        return _LONG_RUN in data.translate(_DIGITS_AS_ZEROS)
    return _LONG_DIGITS_TEXT.search(data) is not None


def loads_exact(data: bytes | str) -> Any:
    """``data`` parsed with every integer kept exactly (beyond 64 bits: as its text)."""
    return json.loads(data, parse_int=_integer, parse_constant=_no_constant)


def loads(data: bytes | str) -> Any:
    """One JSON value; raises orjson.JSONDecodeError as orjson does."""
    value = orjson.loads(data)
    if may_hold_big_integers(data):
        return loads_exact(data)
    return value


def _no_constant(name: str) -> Any:
    raise orjson.JSONDecodeError(f"{name} is not JSON", "", 0)


def exact(value: Any) -> Any:
    """``value`` (a record built in Python) with its integers beyond 64 bits as their decimal
    text, as they are read from JSON (for the Python API, whose records come from no parser)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if _SMALLEST <= value <= _LARGEST else _integer(str(value))
    if isinstance(value, dict):
        return {key: exact(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [exact(item) for item in value]
    return value
