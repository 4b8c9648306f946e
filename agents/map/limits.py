"""Staying under a provider's limits: request and token budgets, shared by processes if asked.
(How many requests are in flight is :mod:`agents.map.congestion`'s.)

Budgets are token buckets that refill continuously at the allowed rate and hold at most a
hundredth of a second's worth of unused credit (one request at least), so no sliding window the
server may count over (a second, a minute) sees more than the rate allows. A request reserves
its estimated cost (one request; prompt estimate plus max_tokens) and waits until the bucket
covers it; the estimate is corrected with the usage the server reports.

A process waits on its budgets one request at a time (:attr:`Budgets.turn`): the next request
reserves only when the one before it is due to go. So a shared budget is served round robin
between the processes that want more than it gives (an equal share each, whatever their
``-j``), what one process leaves unused goes to the others, and no request holds a time far
ahead that a changed limit would make wrong.

With ``--rate-group NAME`` the buckets live in a small JSON file in the runtime folder, changed
under an exclusive ``flock``: every process of the group on this host draws from one budget. The
kernel drops a dead process's lock, so a crash never leaves the budget locked.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

from agents.errors import UsageError
from agents.paths import runtime_folder

#: Unused credit a bucket may hold, in seconds of its rate (at least one unit).
BURST_SECONDS = 0.01

#: The share of a limit that is used, given (--rpm, --tpm: the provider's real limit) or learned
#: from headers: room for requests that reach the server bunched up (the network, the event
#: loop) and for a clock that drifts from the server's, so that no sliding window the server
#: counts over, one second included, sees more than the limit.
LIMIT_SHARE = 0.97


@dataclass
class Bucket:
    rate: float  # units a second
    level: float = 0.0
    updated: float = 0.0

    @property
    def capacity(self) -> float:
        return max(1.0, self.rate * BURST_SECONDS)

    def reserve(self, amount: float, now: float) -> float:
        """Take ``amount`` (going into debt if need be); the seconds to wait before using it."""
        if self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now
        self.level -= amount
        return max(0.0, -self.level / self.rate)

    def retime(self, rate: float, now: float) -> None:
        """Refill at ``rate`` from ``now`` on: the time before is counted at the old rate, and
        a debt stays as many requests (or tokens) as it was. Paid off at the new rate, it keeps
        any window under the new limit whichever way the rate moved (and it is small: each
        process has at most one request waiting on a bucket)."""
        if rate == self.rate:
            return
        if self.updated:
            self.reserve(0.0, now)
        self.rate = rate

    def adjust(self, amount: float) -> None:
        """Give back (positive) or charge more (negative) after the real cost is known. What is
        given back pays off debt but adds no more credit than a bucket holds: a burst of it
        would pass a sliding window that counted the requests as sent."""
        self.level = min(self.capacity, self.level + amount)


class Budgets:
    """Requests-per-minute and tokens-per-minute buckets, in this process or in a shared file."""

    def __init__(
        self,
        rpm: float | None,
        tpm: float | None,
        group_file: str | None = None,
        memory: LimitMemory | None = None,
    ) -> None:
        self.memory = memory
        self.rates = {
            "requests": rpm * LIMIT_SHARE / 60 if rpm else None,
            "tokens": tpm * LIMIT_SHARE / 60 if tpm else None,
        }
        self.given = {name for name, rate in self.rates.items() if rate}
        self.learned: dict[str, float] = {}  # per minute, as the headers said
        self.group_file = group_file
        self.local = {name: Bucket(rate) for name, rate in self.rates.items() if rate}
        self._turn: asyncio.Lock | None = None
        if memory is not None:  # learned by an earlier run: no burst of -j into a fresh limit
            for name, per_minute in memory.recall().items():
                self.set_rate(name, per_minute)

    @property
    def active(self) -> bool:
        return any(self.rates.values())

    @property
    def turn(self) -> asyncio.Lock:
        """Held by the one request of this process that reserves and waits for its time."""
        if self._turn is None:  # made on first use, inside the running event loop
            self._turn = asyncio.Lock()
        return self._turn

    def set_rate(
        self, name: str, per_minute: float, left: float | None = None, reset: float | None = None
    ) -> None:
        """A limit (per minute, as the server's headers give it) learned when none was given,
        or changed since (the server raised or lowered it, or the one remembered from an
        earlier run is out of date); LIMIT_SHARE of it is used, and it is remembered for this
        endpoint's next runs. With what the server says is ``left`` of its window and when the
        window ``reset``s, a new bucket starts in debt for what was already spent, so the first
        window is not overrun either."""
        if name in self.given or self.learned.get(name) == per_minute:
            return
        if self.memory is not None:
            self.memory.keep(name, per_minute)
        rate = per_minute * LIMIT_SHARE / 60
        changed = name in self.learned
        self.learned[name] = per_minute
        self.rates[name] = rate
        if changed and name in self.local:  # the same bucket, refilling at the new rate
            self.local[name].retime(rate, time.time())
            return
        level = 0.0
        if left is not None and reset is not None:
            level = min(0.0, left - rate * reset)
        self.local[name] = Bucket(rate, level, time.time())

    def sync(self, name: str, left: float, reset: float) -> None:
        """Never allow more before the server's window resets than it says is left."""
        if name not in self.local:
            return
        with self._buckets() as buckets:
            bucket = buckets.get(name)
            if bucket is not None:
                now = time.time()
                bucket.reserve(0.0, now)  # bring the level up to date first
                bucket.level = min(bucket.level, left - bucket.rate * reset)

    def reserve(self, tokens: float) -> float:
        amounts = {"requests": 1.0, "tokens": tokens}
        now = time.time()
        with self._buckets() as buckets:
            return max(
                (bucket.reserve(amounts[name], now) for name, bucket in buckets.items()),
                default=0.0,
            )

    def correct_tokens(self, estimated: float, actual: float) -> None:
        if "tokens" not in self.local or estimated == actual:
            return
        with self._buckets() as buckets:
            if "tokens" in buckets:
                buckets["tokens"].adjust(estimated - actual)

    @contextlib.contextmanager
    def _buckets(self) -> Iterator[dict[str, Bucket]]:
        if self.group_file is None:
            yield self.local
            return
        with open(self.group_file, "a+") as stream:
            fcntl.flock(stream, fcntl.LOCK_EX)
            try:
                stream.seek(0)
                try:
                    saved = json.loads(stream.read() or "{}")
                except ValueError:
                    saved = {}
                members = _live_members(saved.get("members"), self.rates)
                buckets = {}
                for name, rate in self.rates.items():
                    if rate:
                        state = saved.get(name) or {}
                        # Members that give different limits: the smallest holds for all, so
                        # that no member's limit is passed by the others' sending.
                        given = [limits[name] for limits in members.values() if limits.get(name)]
                        buckets[name] = _shared_bucket(state, min([rate, *given]))
                yield buckets
                stream.seek(0)
                stream.truncate()
                stream.write(
                    json.dumps(
                        {
                            **{
                                name: {
                                    "level": bucket.level,
                                    "updated": bucket.updated,
                                    "rate": bucket.rate,
                                }
                                for name, bucket in buckets.items()
                            },
                            "members": members,
                        }
                    )
                )
                stream.flush()
            finally:
                fcntl.flock(stream, fcntl.LOCK_UN)


def _shared_bucket(state: dict[str, object], rate: float) -> Bucket:
    """A group's bucket as the file keeps it, refilling at ``rate`` from now on (the rate may
    have changed: a limit learned anew, a member with a smaller one)."""

    def number(key: str, default: float) -> float:
        value = state.get(key)
        return float(value) if isinstance(value, int | float) else default

    before = number("rate", rate)
    bucket = Bucket(before if before > 0 else rate, number("level", 0.0), number("updated", 0.0))
    bucket.retime(rate, time.time())
    return bucket


class LimitMemory:
    """Limits learned from an endpoint's headers, kept in the runtime folder for its next runs
    (``limits-HASH.json``, HASH of the base URL, the key and the model: the key itself is never
    written).
    A run that starts with them sends at the known rate from its first request."""

    def __init__(self, base_url: str, api_key: str | None, model: str) -> None:
        # Providers limit each model on its own: the model is part of the key.
        digest = hashlib.sha256(f"{base_url}\n{api_key or ''}\n{model}".encode()).hexdigest()[:16]
        self.path = runtime_folder() / f"limits-{digest}.json"

    def recall(self) -> dict[str, float]:
        try:
            saved = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(saved, dict):
            return {}
        return {
            name: float(value)
            for name, value in saved.items()
            if name in ("requests", "tokens") and isinstance(value, int | float) and value > 0
        }

    def keep(self, name: str, per_minute: float) -> None:
        saved = self.recall()
        if saved.get(name) == per_minute:
            return
        saved[name] = per_minute
        temporary = self.path.with_suffix(f".{os.getpid()}.tmp")
        with contextlib.suppress(OSError):
            temporary.write_text(json.dumps(saved))
            os.replace(temporary, self.path)


#: A group member not heard from for this many seconds no longer counts (it has ended).
MEMBER_TIMEOUT = 10.0


def _live_members(saved: object, rates: dict[str, float | None]) -> dict[str, dict[str, float]]:
    """The group's members heard from lately, this process among them with its own limits
    (per second), from the group file's ``members`` (PID -> limits and when last seen)."""
    now = time.time()
    members: dict[str, dict[str, float]] = {}
    if isinstance(saved, dict):
        for pid, entry in saved.items():
            if isinstance(entry, dict) and now - float(entry.get("seen", 0)) < MEMBER_TIMEOUT:
                members[str(pid)] = {
                    key: float(value)
                    for key, value in entry.items()
                    if isinstance(value, int | float)
                }
    members[str(os.getpid())] = {
        **{name: rate for name, rate in rates.items() if rate},
        "seen": now,
    }
    return members


_GROUP_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def group_file(name: str) -> str:
    if not _GROUP_NAME.match(name):
        raise UsageError(f"--rate-group {name!r}: use letters, digits, '.', '_' or '-'")
    return str(runtime_folder() / f"rate-group-{name}.json")


__all__ = ["Budgets", "LimitMemory", "group_file"]
