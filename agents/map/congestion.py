"""How many requests may be in flight: a window that tells congestion from noise.

Some failures say the server is overloaded, some happen whatever the load (a flaky proxy, a
provider's sporadic 429s). Shrinking the window for the second kind only slows a job down, so
the window shrinks only on signs of congestion:

a round trip (as many answers as the window holds) whose share of failures (429s, 5xx,
timeouts, dropped connections) stands out from the share seen so far. The window is then cut on
trial, and if the share does not fall with it the failures are noise: the window is given back
and their share becomes the new normal. A round is judged before its end when most of it was
refused, or when a 429 whose ``x-ratelimit-remaining-*`` header says the budget is spent comes
in a round that already stands out. Such a 429 is only a hint, never proof on its own: some
servers send it with sporadic 429s that have nothing to do with load.

It shrinks at most once per round trip (answers to requests sent before a cut do not count
again), by 30 % (by half when most was refused);
after each round trip without congestion it grows back half way to what the server took (the
most answered requests it held at once: refusals come back at once and their slots fill again,
so neither the share of failures nor the requests in flight tell it). After PATIENCE calm round
trips there (or PATIENCE_SECONDS, whichever comes first: slow answers make round trips long) it
probes beyond by 1, 2, 4... more each calm round, and a probe that meets failures goes back to
the widest window it found calm: a server whose capacity grew is followed within a few rounds,
and a fixed one, whose patience doubles each time it is found where it was, costs a few
refusals each probe. A share of failures above MOST_NOISE is never taken for noise when the
server took as many at once after a trial cut as before it: such a server is full. One whose
answers fell with the window fails that often whatever the load.
The body of a 429 is no signal: providers say "rate limit" whatever the cause.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from agents.errors import CallError, Retryable

#: A cut keeps this share of the window.
DECREASE = 0.7

#: Calm round trips at the width the server took before probing beyond it; doubled by each
#: probe that finds congestion where it was (up to the most), so that a server's fixed
#: capacity is not probed, and refused, ever more often.
PATIENCE = 16
MOST_PATIENCE = 128

#: The same patience bounded in time (doubled with it): at 1 s an answer and 2 slots, 128
#: round trips would be minutes of a server grown meanwhile not being used.
PATIENCE_SECONDS = 4.0

#: A trial cut after which the server held at least this share of the answered requests it held
#: at once before says it is full: what it takes did not fall with the window (failures that
#: do not depend on load take their share of every window, and it falls by 30 % or half).
STILL_FULL = 0.85

#: A failure share no load-independent fault reaches: the window is still far too wide, and a
#: cut keeps this share of it.
OVERLOAD = 0.5
OVERLOAD_DECREASE = 0.5

#: A share of failures above this is never taken for noise, whatever a trial cut showed: at a
#: small window a trial says little, and no provider's sporadic faults come this often.
MOST_NOISE = 0.25

#: Answers a round trip is judged on at least, and a trial cut at least: at a small window a
#: round takes several round trips, since the share of a handful of answers says little.
SAMPLE = 16
TRIAL_SAMPLE = 32

#: Answers after which a round whose failures clearly stand out is judged before its end.
EARLY_SAMPLE = 8


class Signal(enum.Enum):
    OK = "ok"  # an answer, or a failure that says nothing about load (a 400)
    FAILED = "failed"  # a 429 without headers, a 5xx, a timeout, a dropped connection
    CONGESTED = "congested"  # a failure too: a 429 whose headers say the budget is spent


@dataclass
class _Round:
    size: int
    started: float
    done: int = 0
    failed: int = 0
    answered: list[tuple[float, float]] = field(default_factory=list)  # (sent, answered)


@dataclass
class _Trial:
    """A cut on trial, and the round trip that caused it, with the answers to it that come
    after the cut: a round judged early on the failures that came back first overstates
    their share, which a trial cut must not take for a fall."""

    window: int  # the window before the cut, given back if the failures are noise
    answers: int
    failed: int
    answered: list[tuple[float, float]]  # (sent, answered) of those that succeeded

    @property
    def share(self) -> float:
        return self.failed / self.answers


class Window:
    """The window's arithmetic, without the waiting (see :class:`Concurrency`)."""

    def __init__(self, ceiling: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.ceiling = ceiling
        self.limit = ceiling
        self.epoch = 0  # bumped by every cut: stamps the requests sent at this window
        self.noise = 0.0  # the share of failures that does not depend on load
        self.congested_at: int | None = None  # the narrowest window known to congest
        self.calm = 0.0  # round trips without congestion just below congested_at
        self.calm_since = 0.0  # when they began
        self.latency: float | None = None  # of an answer, smoothed
        self.patience = PATIENCE
        self.step = 0  # how far the next probe beyond congested_at goes (0: not probing)
        self.calm_at = 0  # the widest window a probe found calm
        self.trial: _Trial | None = None
        self.round = _Round(max(ceiling, SAMPLE), clock())

    def observe(self, epoch: int, signal: Signal, sent: float | None = None) -> None:
        """The outcome of a request sent in ``epoch`` at time ``sent`` (None: not known)."""
        answered = signal is Signal.OK and sent is not None
        if epoch != self.epoch:
            # Sent before the last cut: that round trip has been answered for, but the rest of
            # it still tells the trial what failed and what the server took (refusals come
            # back first).
            trial = self.trial
            if trial is not None and epoch == self.epoch - 1:
                trial.answers += 1
                trial.failed += signal is not Signal.OK
                if answered:
                    trial.answered.append((sent, self.clock()))  # type: ignore[arg-type]
            return
        failed = signal is not Signal.OK
        self.round.done += 1
        self.round.failed += failed
        if answered:
            now = self.clock()
            self.round.answered.append((sent, now))  # type: ignore[arg-type]
            took = now - sent  # type: ignore[operator]
            last = self.latency
            self.latency = took if last is None else last + 0.1 * (took - last)
        if self.round.done >= self.round.size or self._regrowing_calmly():
            self._end_round(self.round.done, self.round.failed)
        elif failed and (answers := self._judge_early(signal)):
            self._end_round(answers, self.round.failed)

    def _regrowing_calmly(self) -> bool:
        """Growing back towards where congestion began, or probing beyond it, and a round trip
        of answers (at least EARLY_SAMPLE / 2) without a failure: a full server refuses at
        once, and a whole round at a small window, when answers are slow, would make following
        a grown server take minutes."""
        top, done = self.congested_at, self.round.done
        regrowing = top is not None and (self.step > 0 or self.limit < top - 1)
        return regrowing and not self.round.failed and done >= max(self.limit, EARLY_SAMPLE // 2)

    def _judge_early(self, signal: Signal) -> int:
        """The answers to judge the round on before its end (0: wait for the rest of it).

        In a probe beyond where congestion began, as soon as the failures so far make the
        whole round stand out whatever the rest says: each more would be one more refusal.
        Elsewhere, once the share so far stands out and either most were refused (a window far
        too wide: -j 200 against a 2-slot server must not wait 200 answers a step) or the last
        one said the budget is spent. Such a 429 is only a hint: some servers send it with
        sporadic 429s. (Refusals come back sooner than answers, so this share overstates the
        round's: the cut may be deeper than needed, and what the server took is told by the
        answers.)"""
        size, done, failed = self.round.size, self.round.done, self.round.failed
        if self.step:
            return size if failed / size > self.threshold(size) else 0
        if done < EARLY_SAMPLE:
            return 0
        if self.latency is not None and self.clock() - self.round.started < self.latency:
            # Failures that come back at once come first: before a round trip, the share of
            # even a few load-independent ones looks like a window far too wide. (Before any
            # answer, a trial tells: its share counts the rest of the round trip.)
            return 0
        share = failed / done
        judged = share > self.threshold(done) and (signal is Signal.CONGESTED or share >= OVERLOAD)
        return done if judged else 0

    def threshold(self, answers: int) -> float:
        """A round trip's failure share above which it stands out from the noise (three
        standard deviations of a binomial share, and a point more)."""
        p = max(self.noise, 1 / answers)
        return self.noise + 3 * math.sqrt(p * (1 - p) / answers) + 0.01

    def _end_round(self, answers: int, failed: int) -> None:
        share = failed / answers
        standing_out = share > self.threshold(answers)
        trial, self.trial = self.trial, None
        if trial is not None:
            took, holds = most_at_once(trial.answered), most_at_once(self.round.answered)
            # (A server that took a handful tells little by what it holds: it is full.)
            full = took < EARLY_SAMPLE or holds >= STILL_FULL * took
            if full and standing_out and max(trial.share, share) >= MOST_NOISE:  # too wide
                self._cut(
                    self._trial(answers, failed),
                    OVERLOAD_DECREASE if share >= OVERLOAD else DECREASE,
                )
                return
            spread = 3 * math.sqrt(
                trial.share * (1 - trial.share) / trial.answers + share * (1 - share) / answers
            )
            combined = (share * answers + trial.share * trial.answers) / (answers + trial.answers)
            if share < trial.share - spread or (full and combined >= MOST_NOISE):
                # The failures fell with the window: congestion, and the server took as
                # many as were in flight when an answered one was sent (at least the window
                # that did well). Refusals come back at once and their slots are filled
                # again, so the share of failures would understate it.
                self._congested(max(self.limit, min(took or trial.window, trial.window)) + 1)
            else:  # load-independent: give the window back, and expect this much from now on
                self.noise = max(self.noise, combined)
                self.limit = max(self.limit, trial.window)
            self._new_round()
        elif standing_out and self.step:
            self._probe_failed()
        elif standing_out:
            # Most refused: halve rather than cut by 30 %, to reach a small server sooner
            # (a 2-slot server and -j 200).
            self._cut(
                self._trial(answers, failed), OVERLOAD_DECREASE if share >= OVERLOAD else DECREASE
            )
        else:
            # (weighed by the round's size: one ended early on a few answers says less)
            learned = self.noise + 0.2 * min(1.0, answers / SAMPLE) * (share - self.noise)
            self.noise = min(max(MOST_NOISE, self.noise), learned)
            # In round trips, but at a window of a few a probe's few refusals would be a large
            # share of what it waits: there it waits as many answers as a window of 4 would.
            self._grow(answers / max(self.limit, 4))
            self._new_round()

    def _trial(self, answers: int, failed: int) -> _Trial:
        return _Trial(self.limit, answers, failed, self.round.answered)

    def _congested(self, at: int) -> None:
        """The narrowest window known to congest is now ``at``. Where it was before, the
        server's capacity has not moved, and it is probed less often; elsewhere it moved,
        and is followed again soon."""
        before = self.congested_at
        stayed = before is not None and before / 1.25 <= at <= before * 1.25
        self.patience = min(self.patience * 2, MOST_PATIENCE) if stayed else PATIENCE
        self.congested_at = at
        self.calm = 0.0
        self.step = 0

    def _probe_failed(self) -> None:
        """Congestion met by a probe: back to the widest window it found calm, and on from
        there as below any congestion met (half way to it, then patience)."""
        met = self.limit
        self.limit = max(1, self.calm_at)
        self.epoch += 1
        self._congested(met)
        self._new_round()

    def _cut(self, trial: _Trial | None = None, keep: float = DECREASE) -> None:
        self.trial = trial
        self.limit = max(1, min(self.limit - 1, math.ceil(self.limit * keep)))
        self.epoch += 1
        self.calm = 0.0
        self.step = 0
        self._new_round()

    def _grow(self, round_trips: float) -> None:
        """After a calm round of ``round_trips``: far below where congestion began, half way
        to it; just below it, wait ``patience`` round trips, then probe beyond it by 1, 2, 4…
        more each calm round, so that a server whose capacity grew is followed within a few
        rounds and a fixed one costs a few refusals each probe."""
        if self.limit >= self.ceiling:
            return
        top = self.congested_at
        if top is None:
            self.limit += max(1, self.limit // 4)
        elif self.step:
            self.calm_at = self.limit
            self.step *= 2
            self.limit += self.step
        elif self.limit < top - 1:
            self.limit += max(1, (top - 1 - self.limit) // 2)
        else:
            if not self.calm:
                self.calm_since = self.round.started
            self.calm += round_trips
            waited = self.clock() - self.calm_since
            if self.calm >= self.patience or waited >= self.patience_seconds():
                self.calm_at = self.limit
                self.step = 1
                self.limit += 1
        self.limit = min(self.limit, self.ceiling)

    def patience_seconds(self) -> float:
        return PATIENCE_SECONDS * self.patience / PATIENCE

    def _new_round(self) -> None:
        # A trial needs more answers to tell noise, unless the share was more than noise has.
        trying = self.trial is not None and self.trial.share < MOST_NOISE
        self.round = _Round(max(self.limit, TRIAL_SAMPLE if trying else SAMPLE), self.clock())


def most_at_once(answered: list[tuple[float, float]]) -> int:
    """The most of these (sent, answered) requests the server held at the same time."""
    ends = sorted(done for _, done in answered)
    most = held = 0
    ended = 0
    for sent in sorted(sent for sent, _ in answered):
        while ends[ended] <= sent:  # an answer before this one was sent (its own is after)
            ended += 1
            held -= 1
        held += 1
        most = max(most, held)
    return most


def signal_of(error: CallError, budgeted: bool = False) -> Signal:
    """What a failed request says about the server's load. With a rate budget in force
    (``budgeted``), a 429 that says the budget is spent is the budget's to handle (it pauses
    until the reset): for the window it is one failure among others."""
    if error.error_type == "rate_limited" and error.exhausted and not budgeted:
        return Signal.CONGESTED
    if isinstance(error, Retryable):
        return Signal.FAILED  # a 429 without headers, a 5xx, a timeout, a dropped connection
    return Signal.OK  # a bad request or a bad key says nothing about load


@dataclass(frozen=True, slots=True)
class Slot:
    """A place in the window: the epoch it was taken in and when."""

    epoch: int
    taken: float


class Concurrency:
    """The window, with waiting for a free slot in it. Taking a free slot costs no await: most
    requests find one, and this runs once per request."""

    def __init__(self, ceiling: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = Window(ceiling, clock)
        self.in_flight = 0
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def try_acquire(self) -> Slot | None:
        """A free slot taken at once (to give back with the outcome), or None."""
        if self.in_flight < self.window.limit and not self.waiters:
            self.in_flight += 1
            return Slot(self.window.epoch, self.window.clock())
        return None

    async def acquire(self) -> Slot:
        """Wait for a free slot and take it (nothing is taken if cancelled while waiting)."""
        while self.in_flight >= self.window.limit:
            waiter = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self.waiters:
                    self.waiters.remove(waiter)
        self.in_flight += 1
        return Slot(self.window.epoch, self.window.clock())

    def sent(self, slot: Slot) -> Slot:
        """The slot as of now, when its request goes out after waiting for a rate budget:
        its outcome belongs to the window in force at sending, and its time on the wire starts
        here (the wait was not the server's)."""
        return Slot(self.window.epoch, self.window.clock())

    def release(self, slot: Slot, signal: Signal | None) -> None:
        """Give the slot back, with what the request's outcome says (None: it was not sent)."""
        self.in_flight -= 1
        if signal is not None:
            self.window.observe(slot.epoch, signal, slot.taken)
        free = self.window.limit - self.in_flight
        while free > 0 and self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1


__all__ = ["Concurrency", "Signal", "Slot", "Window", "signal_of"]
