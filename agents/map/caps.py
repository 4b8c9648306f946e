"""Spending caps: --max-cost and --max-errors stop sending cleanly, exit status 4, resumable.

The cost cap counts what responses cost plus what requests in flight may still cost (their
estimate: prompt plus max_tokens), and refuses a request that could take the total past the
cap, so a run stops within one request's cost of it.
"""

from __future__ import annotations

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


@dataclass
class CostCap:
    limit: float
    spent: float = 0.0
    reserved: float = 0.0

    def reserve(self, estimate: float) -> None:
        if self.spent + self.reserved + estimate > self.limit:
            raise CapReached(
                f"--max-cost ${self.limit:g}: ${self.spent:.4f} spent, and the "
                f"next request could cost ${estimate:.4f} more"
            )
        self.reserved += estimate

    def settle(self, estimate: float, actual: float) -> None:
        self.reserved = max(0.0, self.reserved - estimate)
        self.spent += actual
