"""Identical requests in flight at once share one (``--no-dedup`` turns it off).

Data full of repeated values (the same product name, the same word) asks the same question many
times. While such a request is out, the records that would send it again wait for its outcome
instead, and each reads the one answer as its own (its own merge, its own re-asks, which are
shared in turn when they are identical). Memory is bounded by the requests in flight. With
``--cache`` the accepted answer is kept as soon as it arrives, so identical requests later in
the run are hits: each distinct request is then paid for once a run.

A shared request's failure is every sharer's failure (the same request would fail the same way),
except when the one that went out was cancelled: then a sharer sends it itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class _Cancelled(Exception):
    """The request the others waited for was cancelled before it had an outcome."""


class Sharing:
    """The requests in flight, by key (:func:`agents.map.cache.request_key` of what is sent)."""

    def __init__(self) -> None:
        self.flights: dict[bytes, asyncio.Future[object]] = {}
        self.shared = 0  # requests not sent because an identical one was out

    async def once(self, key: bytes, send: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """``send()``'s outcome, or that of the identical request already in flight;
        (the outcome, whether it was shared rather than sent)."""
        while (flight := self.flights.get(key)) is not None:
            try:
                # shield: a sharer that is cancelled must not cancel the request it waits for
                outcome = await asyncio.shield(flight)
            except _Cancelled:
                continue  # that request never ended: this one goes out instead (or waits again)
            except Exception as error:
                self.shared += 1
                copy = _own_copy(error)
                copy.shared = True  # type: ignore[attr-defined]  # (see Mapper.repeats)
                raise copy from None
            self.shared += 1
            return outcome, True  # type: ignore[return-value]
        flight = asyncio.get_running_loop().create_future()
        self.flights[key] = flight
        try:
            outcome = await send()
        except BaseException as error:
            flight.set_exception(error if isinstance(error, Exception) else _Cancelled())
            flight.exception()  # retrieved: asyncio need not report it when nobody waited
            raise
        else:
            flight.set_result(outcome)
        finally:
            del self.flights[key]
        return outcome, False


def _own_copy(error: Exception) -> Exception:
    """A copy of ``error`` for one sharer, whose handling may change it (its attempts, the
    answer it kept). copy.copy cannot: it calls the class with ``args``, which the package's
    errors do not take."""
    clone = type(error).__new__(type(error), *error.args)
    clone.args = error.args
    clone.__dict__.update(error.__dict__)
    return clone


__all__ = ["Sharing"]
