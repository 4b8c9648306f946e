"""Staying under a provider's limits: request and token budgets, shared by processes if asked.
(How many requests are in flight is :mod:`agents.map.congestion`'s.)

Budgets are token buckets that refill continuously at the allowed rate and hold at most a
hundredth of a second's worth of unused credit (one request at least), so no sliding window the
server may count over (a second, a minute) sees more than the rate allows. A request reserves
its estimated cost (one request; prompt estimate plus max_tokens) and waits until the bucket
covers it; a request that cost more than it reserved (the usage the server reports) is charged
the rest, one that cost less gets nothing back (see :meth:`Bucket.charge`).

A process waits on its budgets one request at a time (:attr:`Budgets.turn`): the next request
reserves only when the one before it is due to go, so no request holds a time far ahead that a
changed limit would make wrong.

In a group, the requests that have reserved and wait for their time form a queue in the group
file (one per member at most), and a bucket's debt is what the newest of them still owe. A
member that will have spent less of the group's budget lately once its request is sent (in
seconds of the refill of the budget that binds: requests, or tokens under --tpm, decaying over
SPENT_SECONDS) takes its place in the queue ahead of those of members that will have spent
more (fair queueing's order by finish time); they wake at their old time, find their
turn moved, and wait again. So every member that wants more than an equal share of the budget
gets one, whatever its ``-j`` and its prompts' size; one that wants less waits for at most one
request of the others; and what one leaves unused goes to the others. Reordering the queue
never changes how much it holds, so the group's limit holds as before.

With ``--rate-group NAME`` the buckets live in a small JSON file in the runtime folder, changed
under an exclusive ``flock``: every process of the group on this host draws from one budget. The
kernel drops a dead process's lock, so a crash never leaves the budget locked. With
``--rate-group redis://HOST:PORT/NAME`` the same document lives in Redis, changed by one atomic
script (:mod:`agents.map.redis_group`), so processes on many hosts draw from one budget.
Either way the document is a :class:`GroupStore`'s, and this module's rules are the only ones.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from agents.errors import AgentsError, UsageError
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

    def charge(self, amount: float) -> None:
        """Charge ``amount`` more, after a request cost more than it reserved.

        A request that cost less gets nothing back: the server counted it when it arrived, so
        credit returned later would let the next requests go early, into windows that still
        count it (reservations half again too large, given back as their answers came, let
        669 tokens into a one-second window of 600)."""
        self.level -= amount


class GroupUnavailable(AgentsError):
    """The group's store cannot be reached (Redis is down or restarting): nothing may be sent
    until it is back, since the group's budget cannot be asked."""


class GroupRefused(AgentsError):
    """The group's store refuses this process (a wrong password, TLS that fails): waiting
    would not help, so the run stops; ``hint`` says what to change."""


class GroupBusy(GroupUnavailable):
    """The group's document is busy (other members changed it each time this one tried): ask
    again in ``seconds``, asleep, not
    blocking the process's requests meanwhile."""

    def __init__(self, message: str, seconds: float) -> None:
        super().__init__(message)
        self.seconds = seconds


Decision = TypeVar("Decision")


class GroupStore(Protocol):
    """Where a rate group's document lives (the buckets, the members, the queue): a file on
    this host, or Redis for many hosts."""

    #: This process's name among the group's members (unique across the group's hosts).
    member: str
    #: How messages name the group.
    name: str

    def now(self) -> float:
        """The group's clock, in seconds since the epoch: the document's times are all on it,
        whichever host wrote them."""
        ...

    def change(self, decide: Callable[[dict[str, Any]], Decision]) -> Decision:
        """Change the document atomically: ``decide`` changes it in place and returns what it
        decided. It may be called again, with the newer document, when another member changed
        it first, so it must do nothing else; only the call that was saved is answered.
        Raises GroupUnavailable when the store cannot be reached (nothing was saved)."""
        ...


class FileGroup:
    """A rate group of this host's processes: a JSON file in the runtime folder, changed under
    an exclusive ``flock`` (the kernel drops a dead process's lock)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.name = path
        self.member = str(os.getpid())

    def now(self) -> float:
        return time.time()

    def change(self, decide: Callable[[dict[str, Any]], Decision]) -> Decision:
        with open(self.path, "a+") as stream:
            fcntl.flock(stream, fcntl.LOCK_EX)
            try:
                stream.seek(0)
                try:
                    saved = json.loads(stream.read() or "{}")
                except ValueError:
                    saved = {}
                if not isinstance(saved, dict):
                    saved = {}
                decision = decide(saved)
                stream.seek(0)
                stream.truncate()
                stream.write(json.dumps(saved))
                stream.flush()
                return decision
            finally:
                fcntl.flock(stream, fcntl.LOCK_UN)


class Budgets:
    """Requests-per-minute and tokens-per-minute buckets, in this process or in a group's
    store (a file, or Redis)."""

    def __init__(
        self,
        rpm: float | None,
        tpm: float | None,
        group: GroupStore | str | None = None,
        memory: LimitMemory | None = None,
    ) -> None:
        self.memory = memory
        self.rates = {
            "requests": rpm * LIMIT_SHARE / 60 if rpm else None,
            "tokens": tpm * LIMIT_SHARE / 60 if tpm else None,
        }
        self.given = {name for name, rate in self.rates.items() if rate}
        self.learned: dict[str, float] = {}  # per minute, as the headers said
        self.group: GroupStore | None = FileGroup(group) if isinstance(group, str) else group
        #: Tokens charged while the group could not be reached, charged once it can.
        self.owed = 0.0
        #: The tokens the request waiting for its time reserved (reserved again if the group
        #: forgets it).
        self.waiting = 0.0
        self.local = {name: Bucket(rate) for name, rate in self.rates.items() if rate}
        self._turn: asyncio.Lock | None = None
        if memory is not None:  # learned by an earlier run: no burst of -j into a fresh limit
            for name, per_minute in memory.recall().items():
                self.set_rate(name, per_minute)

    @property
    def active(self) -> bool:
        """Whether requests wait on these budgets: a limit of this process's, or a group,
        whose other members may know limits this one has not learned yet."""
        return self.group is not None or any(self.rates.values())

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

        def lower(shared: _Shared) -> None:
            bucket = shared.buckets.get(name)
            if bucket is not None:
                bucket.reserve(0.0, shared.now)  # bring the level up to date first
                bucket.level = min(bucket.level, left - bucket.rate * reset)

        # (a group that cannot be reached, or refuses, is told at the next request's
        # admission, which waits or stops the run; this answer is kept either way)
        with contextlib.suppress(GroupUnavailable, GroupRefused):
            self._change(lower)

    def reserve(self, tokens: float) -> float:
        """Take one request and ``tokens`` from the budgets: the seconds to wait before
        sending. In a group, wait that long, then ask :meth:`still_to_wait`. Raises
        GroupUnavailable when the group's store cannot be reached (nothing was taken)."""
        self.waiting = tokens
        return self._change(lambda shared: shared.reserve(tokens))

    def still_to_wait(self) -> float:
        """In a group, the seconds this process's waiting request must still wait (members
        that spent less may have taken its place); 0 when it may go, and it leaves the queue."""
        if self.group is None:
            return 0.0
        return self._change(lambda shared: shared.still_to_wait(self.waiting))

    def withdraw(self) -> None:
        """The waiting request will not be sent (the run stops): it leaves the group's queue.
        What it reserved stays spent, so no window sees more than the limit."""
        if self.group is None:
            return
        # (a store that cannot be reached forgets it with the member)
        with contextlib.suppress(GroupUnavailable, GroupRefused):
            self._change(_Shared.leave)

    def correct_tokens(self, reserved: float, actual: float) -> None:
        """A request that reserved ``reserved`` tokens was counted at ``actual``: the excess is
        charged (see :meth:`Bucket.charge`)."""
        if "tokens" not in self.local or actual <= reserved:
            return
        self.owed += actual - reserved
        with contextlib.suppress(GroupUnavailable, GroupRefused):
            self._change(lambda shared: None)  # (charged there; if the group cannot be
            # reached, by the next change that can)

    def _change(self, decide: Callable[[_Shared], Decision]) -> Decision:
        """``decide`` on the budgets: this process's own, or the group's, in its store (where
        ``decide`` may run more than once: see :meth:`GroupStore.change`)."""
        if self.group is None:
            owed, self.owed = self.owed, 0.0
            if owed and "tokens" in self.local:
                self.local["tokens"].charge(owed)
            return decide(_Shared(self.local, now=time.time()))
        group = self.group
        me = group.member

        def in_document(saved: dict[str, Any]) -> Decision:
            now = group.now()
            members = _live_members(saved.get("members"), self.rates, me, now)
            buckets = {}
            for name, rate in self.rates.items():
                # Members that give different limits: the smallest holds for all, so that no
                # member's limit is passed by the others' sending; a member that has none yet
                # (it joined and has not learned it) keeps the others' from its first request.
                given = [limits[name] for limits in members.values() if limits.get(name)]
                if rate or given:
                    state = saved.get(name)
                    if not isinstance(state, dict):  # (none yet, or not written by agents)
                        state = {}
                    buckets[name] = _shared_bucket(state, min([rate or math.inf, *given]), now)
            if self.owed and "tokens" in buckets:
                buckets["tokens"].charge(self.owed)
            queue = _queue(saved.get("queue"), members)
            shared = _Shared(buckets, now, members, queue, True, me)
            decision = decide(shared)
            saved.clear()
            saved.update(
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
                    "queue": shared.queue,
                }
            )
            return decision

        decision = group.change(in_document)
        self.owed = 0.0  # (charged in the document just saved)
        return decision


#: How long a member's spending is remembered, to order the group's queue: it decays by e in
#: this many seconds. Long against one request's cost, since a member whose requests are large
#: spends in lumps, and what decays meanwhile is a share the others lose (a 2,000-token request
#: at 1,000 a second is 2 s of the budget: remembered over 2 s, its member had 118 % of an
#: equal share, over 8 s 105 %, simulated); a member that joins starts level with the least
#: spent, so one that had the budget to itself is not held back by it.
SPENT_SECONDS = 8.0

#: A request this close to its time goes (a sleep is not more exact than that).
ON_TIME = 0.001

Entry = tuple[str, dict[str, float]]  # a waiting request: its member, what it reserved


@dataclass
class _Shared:
    """The budgets, and in a group its live members and queue, as read from its document."""

    buckets: dict[str, Bucket]
    now: float  # on the group's clock, in a group
    members: dict[str, dict[str, float]] = field(default_factory=dict)
    queue: list[Entry] = field(default_factory=list)
    group: bool = False
    me: str = ""  # this process's name among the members

    def reserve(self, tokens: float) -> float:
        """One request and ``tokens`` taken from the buckets: the seconds to wait."""
        amounts = {name: 1.0 if name == "requests" else tokens for name in self.buckets}
        wait = max(
            (self.buckets[name].reserve(amount, self.now) for name, amount in amounts.items()),
            default=0.0,
        )
        return self.enqueue(amounts) if self.group else wait

    def enqueue(self, amounts: dict[str, float]) -> float:
        """Queue this process's request (already charged to the buckets) ahead of those of
        members not yet due that will have spent more once theirs is sent than this member once
        this one is (as fair queuing orders by finish time): the seconds it waits.

        Compared before their requests (by start time), a member whose requests are ten or
        twenty times larger went twice in a row whenever it was a little behind, each time a
        lump of the budget: 115 % of an equal share for 514-token requests beside 24-token
        ones, 106 % by finish time (simulated, same decay)."""
        me, now = self.me, self.now
        if "spent_at" in self.members[me]:
            spent = _spent(self.members[me], now)
        else:  # a newcomer starts level with the least spent, not ahead of all until it caught up
            others = [_spent(m, now) for pid, m in self.members.items() if "spent_at" in m]
            spent = min(others, default=0.0)
        finish = spent + max(
            (amounts[name] / bucket.rate for name, bucket in self.buckets.items()), default=0.0
        )
        self.queue = [entry for entry in self.queue if entry[0] != me]
        self.queue.append((me, amounts))
        place = len(self.queue) - 1
        while place and self._unpaid(place - 1) > 0:
            other = self.members.get(self.queue[place - 1][0], {})
            if _spent(other, now) <= finish:  # its spend already counts its waiting request
                break
            self.queue[place - 1], self.queue[place] = self.queue[place], self.queue[place - 1]
            place -= 1
        self.members[me].update(spent=finish, spent_at=now)
        wait = self._unpaid(place)
        if wait <= ON_TIME:  # it goes now: nothing to wait for in the queue
            del self.queue[place]
            return 0.0
        return wait

    def still_to_wait(self, tokens: float) -> float:
        me = self.me
        place = next((k for k, (pid, _) in enumerate(self.queue) if pid == me), None)
        if place is None:
            # The document was forgotten while this request waited in its queue (Redis
            # restarted or was flushed, the group file removed): what it reserved is counted no
            # more, and sent on the old reservation it would pass the limit with the others
            # that were waiting (1.2 times it, measured). So it reserves again.
            return self.reserve(tokens)
        for bucket in self.buckets.values():
            bucket.reserve(0.0, self.now)  # refilled until now
        wait = self._unpaid(place)
        if wait <= ON_TIME:
            del self.queue[place]
            return 0.0
        return wait

    def leave(self) -> None:
        me = self.me
        self.queue = [entry for entry in self.queue if entry[0] != me]

    def _unpaid(self, place: int) -> float:
        """Seconds until the request at ``place`` is paid for: each bucket's debt is owed by
        the newest requests, so it is paid once the debt is no more than theirs after it.
        (The buckets must be refilled until now.)"""
        later = self.queue[place + 1 :]
        return max(
            (
                (-bucket.level - sum(amounts.get(name, 0.0) for _, amounts in later)) / bucket.rate
                for name, bucket in self.buckets.items()
            ),
            default=0.0,
        )


def _spent(member: dict[str, float], now: float) -> float:
    """A member's recent spending, in seconds of the binding budget's refill."""
    age = max(0.0, now - member.get("spent_at", now))
    return member.get("spent", 0.0) * math.exp(-age / SPENT_SECONDS)


def _queue(saved: object, members: dict[str, dict[str, float]]) -> list[Entry]:
    """The group's waiting requests as the file keeps them, without those of members gone
    (what they reserved stays spent)."""
    queue: list[Entry] = []
    if isinstance(saved, list):
        for entry in saved:
            if (
                isinstance(entry, list)
                and len(entry) == 2
                and str(entry[0]) in members
                and isinstance(entry[1], dict)
            ):
                amounts = {
                    str(name): float(value)
                    for name, value in entry[1].items()
                    if isinstance(value, int | float)
                }
                queue.append((str(entry[0]), amounts))
    return queue


def _shared_bucket(state: dict[str, object], rate: float, now: float) -> Bucket:
    """A group's bucket as the file keeps it, refilling at ``rate`` from now on (the rate may
    have changed: a limit learned anew, a member with a smaller one)."""

    def number(key: str, default: float) -> float:
        value = state.get(key)
        return float(value) if isinstance(value, int | float) else default

    before = number("rate", rate)
    bucket = Bucket(before if before > 0 else rate, number("level", 0.0), number("updated", 0.0))
    bucket.retime(rate, now)
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


def _live_members(
    saved: object, rates: dict[str, float | None], me: str, now: float
) -> dict[str, dict[str, float]]:
    """The group's members heard from lately, this process (``me``) among them with its own
    limits (per second), from the group document's ``members`` (member -> limits and when
    last seen)."""
    members: dict[str, dict[str, float]] = {}
    if isinstance(saved, dict):
        for pid, entry in saved.items():
            if isinstance(entry, dict) and now - float(entry.get("seen", 0)) < MEMBER_TIMEOUT:
                members[str(pid)] = {
                    key: float(value)
                    for key, value in entry.items()
                    if isinstance(value, int | float)
                }
    members[me] = {
        **members.get(me, {}),  # what it spent lately
        **{name: rate for name, rate in rates.items() if rate},
        "seen": now,
    }
    return members


#: What a rate group may be named (a file name here, a key in Redis).
GROUP_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def group_file(name: str) -> str:
    if not GROUP_NAME.match(name):
        raise UsageError(f"--rate-group {name!r}: use letters, digits, '.', '_' or '-'")
    return str(runtime_folder() / f"rate-group-{name}.json")


__all__ = [
    "GROUP_NAME",
    "Budgets",
    "Decision",
    "FileGroup",
    "GroupBusy",
    "GroupRefused",
    "GroupStore",
    "GroupUnavailable",
    "LimitMemory",
    "group_file",
]
