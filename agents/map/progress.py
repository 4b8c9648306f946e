"""Progress on stderr: two lines redrawn in place on a terminal, a plain line now and then
elsewhere (only when asked), nothing with --quiet.

    Processing: ████████░░ 1,247/10,000 (12.5%) | Rate: 45/min | ETA: 3m 12s
    Errors: 3 | Last: invalid_json: the answer holds no valid JSON (item #1,089)
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import IO

from agents.contract.ids import ID_KEY, Record

BAR = 10


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

    def record(self, output: Record, succeeded: bool) -> None:
        self.done += 1
        if not succeeded:
            self.failed += 1
            identifier = output.get(ID_KEY)
            shown = f"{identifier:,}" if isinstance(identifier, int) else str(identifier)
            self.last_error = f"{output.get('error_type')}: {output.get('error')} (item #{shown})"


def lines(tally: Tally, total: int | None, now: float | None = None) -> tuple[str, str]:
    elapsed = max(1e-9, (now if now is not None else time.monotonic()) - tally.started)
    per_minute = tally.done / elapsed * 60
    rate = f"Rate: {per_minute:,.0f}/min"
    if total:
        share = min(1.0, tally.done / total)
        filled = int(share * BAR)
        bar = "█" * filled + "░" * (BAR - filled)
        remaining = max(0, total - tally.done)
        eta = duration(remaining / (tally.done / elapsed)) if tally.done else "?"
        first = f"Processing: {bar} {tally.done:,}/{total:,} ({share:.1%}) | {rate} | ETA: {eta}"
    else:
        first = f"Processing: {tally.done:,} done | {rate}"
    second = f"Errors: {tally.failed:,}" + (
        f" | Last: {tally.last_error}" if tally.last_error else ""
    )
    return first, second


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

    def draw(self) -> None:
        first, second = lines(self.tally, self.total)
        width = 200
        try:
            if self.terminal:
                prefix = "\x1b[2K\r" if not self.drawn else "\x1b[1A\x1b[2K\r"
                self.stream.write(f"{prefix}{first[:width]}\n\x1b[2K\r{second[:width]}")
            else:
                self.stream.write(f"{first} | {second}\n")
            self.stream.flush()
            self.drawn = True
        except (OSError, ValueError):
            pass

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
