"""Spending caps: --max-cost and --max-errors stop sending cleanly, exit status 4, resumable.

The cost cap counts what responses cost plus what requests in flight may still cost (their
worst case: a bound on the prompt's tokens plus max_tokens), and sends a request only when its
worst case fits under the cap, so a run stops within one request's cost of it, and never passes
it when max_tokens is given.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from agents.errors import CapReached, UsageError

#: --max-errors as a percentage applies only after this many records were attempted.
MINIMUM_FOR_PERCENT = 20


@dataclass
class ErrorCap:
    count: int | None = None
    percent: float | None = None

    @classmethod
    def parse(cls, text: str) -> ErrorCap:
        try:
            if text.endswith("%"):
                percent = float(text[:-1])
                if not 0 < percent <= 100:
                    raise ValueError
                return cls(percent=percent)
            count = int(text)
            if count < 1:
                raise ValueError
            return cls(count=count)
        except ValueError:
            raise UsageError(
                f"--max-errors takes a count (50) or a percentage (5%), not {text!r}"
            ) from None

    def check(self, failed: int, attempted: int) -> None:
        if self.count is not None and failed >= self.count:
            raise CapReached(f"--max-errors {self.count}: {failed} records failed")
        if (
            self.percent is not None
            and attempted >= MINIMUM_FOR_PERCENT
            and failed * 100 >= self.percent * attempted
        ):
            raise CapReached(
                f"--max-errors {self.percent:g}%: {failed} of {attempted} records failed"
            )


#: What a sum of prices may pass the cap by and still fit: float rounding, not money (three
#: requests of $0.10 add up to $0.30000000000000004, which must fit a --max-cost 0.3).
FIT_TOLERANCE = 1 + 1e-9


class CostCap:
    """--max-cost: each request reserves its worst case before it is sent and gives back what it
    did not use when its answer arrives. A request that does not fit waits while others are in
    flight (what they give back may make room); the cap is reached only when nothing is in
    flight and the next request still does not fit."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.spent = 0.0
        self.reserved = 0.0
        self.outstanding = 0  # reservations not yet settled
        self.settled = asyncio.Event()

    async def reserve(
        self, worst: Callable[[], float], alone: Callable[[], bool] = lambda: False
    ) -> float:
        """Reserve ``worst()`` once it fits (and, while ``alone()``, once nothing else is in
        flight), both asked again after each answer, which may change them; CapReached when it
        cannot fit even with nothing in flight. Returns what was reserved."""
        while True:
            if alone() and self.outstanding:
                pass
            elif self.spent + self.reserved + (cost := worst()) <= self.limit * FIT_TOLERANCE:
                self.reserved += cost
                self.outstanding += 1
                return cost
            elif not self.outstanding:
                raise CapReached(
                    f"--max-cost ${self.limit:g}: ${self.spent:.4f} spent, and the "
                    f"next request could cost ${cost:.4f} more"
                )
            self.settled.clear()  # no await since the check: no settle can be missed
            await self.settled.wait()

    def settle(self, worst: float, actual: float) -> None:
        self.reserved = max(0.0, self.reserved - worst)
        self.outstanding = max(0, self.outstanding - 1)
        self.spent += actual
        self.settled.set()
