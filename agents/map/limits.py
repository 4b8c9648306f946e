"""Staying under a provider's limits: request and token budgets, shared by processes if asked.
(How many requests are in flight is :mod:`agents.map.congestion`'s.)

Budgets are token buckets that refill continuously at the allowed rate and hold at most a
hundredth of a second's worth of unused credit (one request at least), so no sliding window the
server may count over (a second, a minute) sees more than the rate allows. A request reserves
its estimated cost (one request; prompt estimate plus max_tokens) and waits until the bucket
covers it; the estimate is corrected with the usage the server reports.

A process waits on its budgets one request at a time (:attr:`Budgets.turn`): the next request
reserves only when the one before it is due to go, so no request holds a time far ahead that a
changed limit would make wrong. In a group, each member keeps in the file what it has spent
lately (in seconds of the binding budget's refill: requests, or tokens under --tpm, decaying
over SPENT_SECONDS) and whether it wants more; one that has spent more than another that wants
more gives way and asks again shortly. So the processes that want more than the budget gives
get an equal share each, whatever their ``-j`` and prompt sizes, and what one leaves unused
goes to the others.

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
import math
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
        self.waiting = 0  # requests of this process at its turn, the one holding it included
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
        with self._buckets() as (buckets, _):
            bucket = buckets.get(name)
            if bucket is not None:
                now = time.time()
                bucket.reserve(0.0, now)  # bring the level up to date first
                bucket.level = min(bucket.level, left - bucket.rate * reset)

    def reserve(self, tokens: float) -> float | None:
        """Take one request and ``tokens`` from the budgets: the seconds to wait before
        sending. None when this process must give way to a member of its group that has had
        less of the budget lately and wants more: ask again after YIELD_SECONDS."""
        amounts = {"requests": 1.0, "tokens": tokens}
        now = time.time()
        with self._buckets() as (buckets, members):
            # What the request costs of the budget that binds: seconds of its refill.
            cost = max((amounts[name] / b.rate for name, b in buckets.items()), default=0.0)
            me = members.get(str(os.getpid()))
            if me is not None:
                spent = _decayed(me, now)
                if any(
                    _wants(other, now) and _decayed(other, now) < spent
                    for pid, other in members.items()
                    if other is not me
                ):
                    me.update(spent=spent, spent_at=now, wanting=1.0, due=now)
                    return None
            wait = max(
                (bucket.reserve(amounts[name], now) for name, bucket in buckets.items()),
                default=0.0,
            )
            if me is not None:
                me.update(
                    spent=_decayed(me, now) + cost,
                    spent_at=now,
                    wanting=1.0 if self.waiting > 1 else 0.0,
                    due=now + wait,
                )
            return wait

    def correct_tokens(self, estimated: float, actual: float) -> None:
        if "tokens" not in self.local or estimated == actual:
            return
        with self._buckets() as (buckets, _):
            if "tokens" in buckets:
                buckets["tokens"].adjust(estimated - actual)

    @contextlib.contextmanager
    def _buckets(self) -> Iterator[tuple[dict[str, Bucket], dict[str, dict[str, float]]]]:
        """The buckets, and the group's live members (none without a group), to change under
        the group file's lock."""
        if self.group_file is None:
            yield self.local, {}
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
                yield buckets, members
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

#: How a member's share of the budget is remembered: spending decays by e in this many seconds.
SPENT_SECONDS = 2.0

#: A member that gives way asks again after this long; one that wanted more than it took is
#: taken to want more until this long after its request's time.
YIELD_SECONDS = 0.01
WANTING_SECONDS = 0.5


def _decayed(member: dict[str, float], now: float) -> float:
    """A member's recent spending, in seconds of the binding budget's refill."""
    age = max(0.0, now - member.get("spent_at", now))
    return member.get("spent", 0.0) * math.exp(-age / SPENT_SECONDS)


def _wants(member: dict[str, float], now: float) -> bool:
    return bool(member.get("wanting")) and now < member.get("due", 0.0) + WANTING_SECONDS


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
    me = str(os.getpid())
    members[me] = {
        **members.get(me, {}),  # what it spent lately, whether it wants more
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
