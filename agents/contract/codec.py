"""The line codec of the stream: one compact UTF-8 JSON object per line."""

from __future__ import annotations

import functools
from collections.abc import Callable

import orjson

from agents.contract.ids import Record

#: One compact JSON line, newline included (a partial, so that it costs no Python frame).
encode: Callable[[Record], bytes] = functools.partial(
    orjson.dumps, option=orjson.OPT_APPEND_NEWLINE
)
