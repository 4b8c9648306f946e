"""Writing a large CSV or TSV on every core.

Parsing JSON and quoting CSV are C code that holds the GIL, so one process uses one core. For a
one-shot CSV target the input is cut into chunks of whole lines, and worker processes each parse
a chunk and render its rows for the current columns; the parent writes the results in input
order. A chunk holding a key the columns lack comes back with those keys instead: the parent
widens the table (csv.Writer.add_columns) and has that chunk, and every later one in flight,
rendered again. The output is byte for byte what the single-process writer produces.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import tempfile
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.pool import AsyncResult
from typing import BinaryIO

from agents.errors import DataError
from agents.formats import csv as csv_format
from agents.formats._encodings import strip_bom
from agents.formats._options import BadRowHandler
from agents.formats.jsonl import parse_lines

#: Bytes of input per chunk handed to a worker.
CHUNK_BYTES = 1 << 20

#: Problems found in a chunk: (where, reason, hint) of each bad line, in order.
Problems = list[tuple[str, str, str | None]]


@dataclass(frozen=True)
class Task:
    data: bytes
    first_line: int
    columns: tuple[str, ...]
    fixed: bool
    fmt: str
    delimiter: str
    name: str


@dataclass(frozen=True)
class Rendered:
    """Rows rendered into a temporary file: a path costs far less to hand back than the bytes."""

    path: str
    count: int
    problems: Problems


@dataclass(frozen=True)
class Widen:
    """The chunk has keys the columns lack, in first-seen order."""

    keys: list[str]
    problems: Problems


def render(task: Task) -> Rendered | Widen:
    """In a worker: parse a chunk and render its rows, or report the new keys it holds."""
    problems: Problems = []

    def bad(error: DataError) -> None:
        problems.append((error.where, error.reason, error.hint))

    lines = task.data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    records = parse_lines(lines, task.name, task.first_line, bad)
    if not task.fixed:
        known = set(task.columns)
        if not all(map(known.issuperset, records)):
            new: dict[str, None] = {}
            for record in records:
                new.update((key, None) for key in record if key not in known)
            return Widen(list(new), problems)
    columns = list(task.columns)
    fd, path = tempfile.mkstemp(prefix="agents-write.", suffix=".part")
    with os.fdopen(fd, "wb") as out:
        writer = csv_format.Writer(out, task.fmt, task.delimiter, columns, columns)
        writer.write_many(records)
        writer.close()
    return Rendered(path, len(records), problems)


def chunks(stream: BinaryIO, size: int | None = None) -> Iterator[bytes]:
    """Chunks of at least ``size`` bytes (but the last), each ending at a line end; a UTF-8
    byte-order mark before the first line is dropped (see LineSplitter)."""
    pieces = _chunks(stream, size)
    first = next(pieces, None)
    if first is not None:
        yield strip_bom(first)
        yield from pieces


def _chunks(stream: BinaryIO, size: int | None) -> Iterator[bytes]:
    size = size or CHUNK_BYTES
    read = getattr(stream, "read1", stream.read)
    parts: list[bytes] = []
    held = 0
    while True:
        data = read(size)
        if not data:
            if parts:
                yield b"".join(parts)
            return
        parts.append(data)
        held += len(data)
        if held < size:
            continue
        joined = b"".join(parts)
        cut = joined.rfind(b"\n") + 1
        if cut == 0:
            parts, held = [joined], len(joined)
            continue
        yield joined[:cut]
        parts = [joined[cut:]] if cut < len(joined) else []
        held = len(joined) - cut


def _ignore_signals() -> None:
    # The parent handles Ctrl-C and SIGTERM and ends the pool; workers just stop with it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def write_parallel(
    pieces: Iterator[bytes],
    writer: csv_format.Writer,
    fmt: str,
    name: str,
    bad: BadRowHandler,
    workers: int | None = None,
) -> int:
    """Render ``pieces`` of JSON Lines into ``writer`` on ``workers`` processes; the count."""
    count = workers or os.cpu_count() or 2
    context = multiprocessing.get_context("fork")
    pool = context.Pool(count, initializer=_ignore_signals)
    queue: deque[tuple[bytes, int, AsyncResult[Rendered | Widen]]] = deque()
    written = 0

    def submit(data: bytes, first_line: int) -> AsyncResult[Rendered | Widen]:
        task = Task(
            data, first_line, tuple(writer.columns), writer.fixed, fmt, writer.delimiter, name
        )
        return pool.apply_async(render, (task,))

    def finish_oldest() -> None:
        nonlocal written
        data, first_line, pending = queue.popleft()
        result = pending.get()
        while isinstance(result, Widen):
            writer.add_columns(result.keys)
            for index, (later, line, stale) in enumerate(queue):
                _discard(stale)  # rendered for the narrower header: its part is thrown away
                queue[index] = (later, line, submit(later, line))
            result = submit(data, first_line).get()
        try:
            for where, reason, hint in result.problems:
                bad(DataError(where, reason, hint))
            with open(result.path, "rb") as part:
                writer.write_rendered(part)
        finally:
            os.unlink(result.path)
        written += result.count

    try:
        line = 1
        for data in pieces:
            queue.append((data, line, submit(data, line)))
            line += data.count(b"\n")
            while len(queue) > 2 * count:
                finish_oldest()
        while queue:
            finish_oldest()
    finally:
        pool.terminate()
        pool.join()
        for _, _, pending in queue:  # parts rendered but never written (an error, Ctrl-C)
            if pending.ready():
                _discard(pending)
    return written


def _discard(pending: AsyncResult[Rendered | Widen]) -> None:
    """Wait for a task that will not be written and remove the part it rendered."""
    with contextlib.suppress(Exception):
        result = pending.get()
        if isinstance(result, Rendered):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(result.path)
