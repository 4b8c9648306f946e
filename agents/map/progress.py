"""Progress on stderr: two lines redrawn in place on a terminal, a plain line now and then
elsewhere (only when asked), nothing with --quiet.

    Processing: ████████░░ 1,247/10,000 (12.5%) | Rate: 45/min | ETA: 3m 12s
    Errors: 3 | Last: invalid_json: the answer holds no valid JSON (item #1,089)

On a terminal each line fits its width (measured at every redraw, wide characters counted
twice): a long last error is shortened, and the first line drops its label, then its bar, on a
narrow one. A line that wrapped would leave a stale copy behind at the next redraw, since the
cursor goes back up one line per line drawn. Messages printed during the run go through
:meth:`Progress.above`, which clears the two lines first.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, BinaryIO

from agents.contract.ids import ID_KEY, Record

BAR = 10

#: Width assumed when a terminal does not say.
DEFAULT_WIDTH = 80

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


def one_line(text: str) -> str:
    """``text`` with newlines, tabs and escape sequences' starts made spaces: a server's error
    message must not move the cursor."""
    return _CONTROL.sub(" ", text)


def _columns(character: str) -> int:
    if unicodedata.combining(character):
        return 0
    return 2 if unicodedata.east_asian_width(character) in ("W", "F") else 1


def columns(text: str) -> int:
    """The terminal columns ``text`` takes."""
    return sum(map(_columns, text))


def fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` columns, ending in an ellipsis when cut."""
    if columns(text) <= width:
        return text
    out, used = [], 0
    for character in text:
        used += _columns(character)
        if used > width - 1:
            break
        out.append(character)
    return "".join(out) + "…"


def duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {seconds}s"
    return f"{seconds}s"


@dataclass
class Tally:
    """What progress shows, updated as each result is written."""

    done: int = 0
    failed: int = 0
    last_error: str | None = None
    started: float = field(default_factory=time.monotonic)
    errors: dict[str, int] = field(default_factory=dict)  # failed records by error type

    def record(self, output: Record, succeeded: bool) -> None:
        self.done += 1
        if not succeeded:
            self.failed += 1
            kind = str(output.get("error_type"))
            self.errors[kind] = self.errors.get(kind, 0) + 1
            identifier = output.get(ID_KEY)
            shown = f"{identifier:,}" if isinstance(identifier, int) else str(identifier)
            self.last_error = f"{output.get('error_type')}: {output.get('error')} (item #{shown})"


def lines(
    tally: Tally, total: int | None, now: float | None = None, width: int | None = None
) -> tuple[str, str]:
    """The two lines, each within ``width`` columns when given."""
    elapsed = max(1e-9, (now if now is not None else time.monotonic()) - tally.started)
    per_minute = tally.done / elapsed * 60
    rate = f"Rate: {per_minute:,.0f}/min"
    if total:
        share = min(1.0, tally.done / total)
        filled = int(share * BAR)
        bar = "█" * filled + "░" * (BAR - filled)
        remaining = max(0, total - tally.done)
        eta = duration(remaining / (tally.done / elapsed)) if tally.done else "?"
        count = f"{tally.done:,}/{total:,} ({share:.1%})"
        shapes = [
            f"Processing: {bar} {count} | {rate} | ETA: {eta}",
            f"{bar} {count} | {rate} | ETA: {eta}",
            f"{count} | {rate} | ETA: {eta}",
            f"{count} | ETA: {eta}",
        ]
    else:
        shapes = [f"Processing: {tally.done:,} done | {rate}", f"{tally.done:,} done | {rate}"]
    second = f"Errors: {tally.failed:,}" + (
        f" | Last: {one_line(tally.last_error)}" if tally.last_error else ""
    )
    if width is None:
        return shapes[0], second
    first = next((shape for shape in shapes if columns(shape) <= width), fit(shapes[-1], width))
    return first, fit(second, width)


class Progress:
    """Redraws on a terminal every ``interval`` seconds; elsewhere prints a line every
    ``plain_interval`` seconds."""

    def __init__(
        self,
        stream: IO[str],
        tally: Tally,
        total: int | None,
        terminal: bool,
        interval: float = 0.25,
        plain_interval: float = 5.0,
    ) -> None:
        self.stream = stream
        self.tally = tally
        self.total = total
        self.terminal = terminal
        self.interval = interval if terminal else plain_interval
        self.drawn = False

    def width(self) -> int:
        """The terminal's width now, less one column: writing the last column makes some
        terminals wrap."""
        try:
            return max(10, os.get_terminal_size(self.stream.fileno()).columns - 1)
        except (OSError, ValueError, AttributeError):
            return DEFAULT_WIDTH - 1

    def draw(self) -> None:
        try:
            if self.terminal:
                first, second = lines(self.tally, self.total, width=self.width())
                prefix = "\x1b[2K\r" if not self.drawn else "\x1b[1A\x1b[2K\r"
                self.stream.write(f"{prefix}{first}\n\x1b[2K\r{second}")
            else:
                first, second = lines(self.tally, self.total)
                self.stream.write(f"{first} | {second}\n")
            self.stream.flush()
            self.drawn = True
        except (OSError, ValueError):
            pass

    def above(self, write: Callable[[], None]) -> None:
        """Print a message (``write``) above the progress: the two lines are cleared first and
        drawn again at the next redraw, so none is left behind."""
        if self.terminal and self.drawn:
            try:
                self.stream.write("\x1b[2K\r\x1b[1A\x1b[2K\r")
                self.stream.flush()
            except (OSError, ValueError):
                pass
            self.drawn = False
        write()

    def finish(self) -> None:
        """The final figures: redrawn in place on a terminal, one last line elsewhere."""
        self.draw()
        if self.terminal:
            try:
                self.stream.write("\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass

    async def run(self) -> None:
        while True:
            self.draw()
            await asyncio.sleep(self.interval)


class ResultsAbove:
    """Standard output on the progress's terminal: each result is written above the progress
    lines (cleared first), else the next redraw would erase it."""

    def __init__(self, stream: BinaryIO, progress: Progress) -> None:
        self.stream = stream
        self.progress = progress

    def write(self, data: bytes) -> int:
        written = 0

        def write() -> None:
            nonlocal written
            written = self.stream.write(data)
            self.stream.flush()

        self.progress.above(write)
        return written

    def flush(self) -> None:
        self.stream.flush()

    def fileno(self) -> int:
        return self.stream.fileno()
