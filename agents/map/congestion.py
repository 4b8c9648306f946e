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
again), by 30 %; after each round trip without congestion it grows back half way to where
congestion began, then one request at a time, and only after a few calm round trips beyond it.
The body of a 429 is no signal: providers say "rate limit" whatever the cause.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import math
from dataclasses import dataclass

from agents.errors import CallError, Retryable

#: A cut keeps this share of the window.
DECREASE = 0.7

#: Calm round trips just below the window where congestion began before trying one more;
#: doubled by each try that meets congestion again (up to the most), so that a server's fixed
#: capacity is not probed, and refused, ever more often.
PATIENCE = 16
MOST_PATIENCE = 64

#: A failure share no load-independent fault reaches: the window is still far too wide, and a
#: cut keeps this share of it.
OVERLOAD = 0.5
OVERLOAD_DECREASE = 0.5

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
    done: int = 0
    failed: int = 0


@dataclass(frozen=True)
class _Trial:
    """A cut on trial, and the round trip that caused it."""

    window: int  # the window before the cut, given back if the failures are noise
    answers: int
    share: float  # of failures
    succeeded: int  # what the server took at that window: where congestion begins


class Window:
    """The window's arithmetic, without the waiting (see :class:`Concurrency`)."""

    def __init__(self, ceiling: int) -> None:
        self.ceiling = ceiling
        self.limit = ceiling
        self.epoch = 0  # bumped by every cut: stamps the requests sent at this window
        self.noise = 0.0  # the share of failures that does not depend on load
        self.congested_at: int | None = None  # where growth slows: congestion began there
        self.last_congested: int | None = None  # where it began last, for telling probes
        self.calm = 0  # round trips without congestion just below congested_at
        self.patience = PATIENCE
        self.trial: _Trial | None = None
        self.round = _Round(max(ceiling, SAMPLE))

    def observe(self, epoch: int, signal: Signal) -> None:
        """The outcome of a request sent in ``epoch``."""
        if epoch != self.epoch:
            return  # sent before the last cut: that round trip has been answered for
        failed = signal is not Signal.OK
        self.round.done += 1
        self.round.failed += failed
        if self.round.done >= self.round.size or (failed and self._judge_early(signal)):
            self._end_round()

    def _judge_early(self, signal: Signal) -> bool:
        """Whether the round so far is evidence enough, without waiting for the rest of it:
        its share of failures stands out and either most were refused (a window far too wide:
        -j 200 against a 2-slot server must not wait 200 answers a step) or the last one said
        the budget is spent."""
        done = self.round.done
        if done < EARLY_SAMPLE:
            return False
        share = self.round.failed / done
        return share > self.threshold(done) and (signal is Signal.CONGESTED or share >= OVERLOAD)

    def threshold(self, answers: int) -> float:
        """A round trip's failure share above which it stands out from the noise (three
        standard deviations of a binomial share, and a point more)."""
        p = max(self.noise, 1 / answers)
        return self.noise + 3 * math.sqrt(p * (1 - p) / answers) + 0.01

    def _end_round(self) -> None:
        done, failed = self.round.done, self.round.failed
        share = failed / done
        standing_out = share > self.threshold(done)
        trial, self.trial = self.trial, None
        if trial is not None:
            if trial.share >= OVERLOAD and standing_out:  # still far too wide: cut again
                self._cut(_Trial(self.limit, done, share, done - failed), OVERLOAD_DECREASE)
                return
            spread = 3 * math.sqrt(
                trial.share * (1 - trial.share) / trial.answers + share * (1 - share) / done
            )
            if share < trial.share - spread:  # the failures fell with the window: congestion
                # where it begins: what the server took at the wider window, or at least
                # the window that just did well
                self._congested(max(self.limit, min(trial.succeeded, trial.window)), trial.window)
            else:  # load-independent: give the window back, and expect this much from now on
                self.noise = max(
                    self.noise,
                    (share * done + trial.share * trial.answers) / (done + trial.answers),
                )
                self.limit = max(self.limit, trial.window)
            self._new_round()
        elif standing_out:
            # Most refused: halve rather than cut by 30 %, to reach a small server sooner
            # (a 2-slot server and -j 200).
            self._cut(
                _Trial(self.limit, done, share, done - failed),
                OVERLOAD_DECREASE if share >= OVERLOAD else DECREASE,
            )
        else:
            self.noise += 0.2 * (share - self.noise)
            self._grow()
            self._new_round()

    def _congested(self, begins: int, window: int) -> None:
        """Congestion began at ``begins``, met at ``window``."""
        probing = self.last_congested is not None and window >= self.last_congested
        self.patience = min(self.patience * 2, MOST_PATIENCE) if probing else PATIENCE
        self.congested_at = self.last_congested = begins
        self.calm = 0

    def _cut(self, trial: _Trial | None = None, keep: float = DECREASE) -> None:
        self.trial = trial
        self.limit = max(1, math.floor(self.limit * keep))
        self.epoch += 1
        self.calm = 0
        self._new_round()

    def _grow(self) -> None:
        if self.limit >= self.ceiling:
            return
        top = self.congested_at
        if top is None:
            self.limit += max(1, self.limit // 4)
        elif self.limit < top - 1:
            self.limit += max(1, (top - 1 - self.limit) // 2)
        else:
            self.calm += 1
            if self.calm >= self.patience:
                # Calm long enough just below it: try one more, and expect congestion a quarter
                # further (the server's limit may have moved), so that after a passing dip the
                # window finds its way back up in a few such steps.
                self.limit += 1
                self.calm = 0
                self.congested_at = max(top + 1, math.ceil(top * 1.25))
        self.limit = min(self.limit, self.ceiling)

    def _new_round(self) -> None:
        self.round = _Round(max(self.limit, TRIAL_SAMPLE if self.trial else SAMPLE))


def signal_of(error: CallError, budgeted: bool = False) -> Signal:
    """What a failed request says about the server's load. With a rate budget in force
    (``budgeted``), a 429 that says the budget is spent is the budget's to handle (it pauses
    until the reset): for the window it is one failure among others."""
    if error.error_type == "rate_limited" and error.exhausted and not budgeted:
        return Signal.CONGESTED
    if isinstance(error, Retryable):
        return Signal.FAILED  # a 429 without headers, a 5xx, a timeout, a dropped connection
    return Signal.OK  # a bad request or a bad key says nothing about load


class Concurrency:
    """The window, with waiting for a free slot in it. Taking a free slot costs no await: most
    requests find one, and this runs once per request."""

    def __init__(self, ceiling: int) -> None:
        self.window = Window(ceiling)
        self.in_flight = 0
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def try_acquire(self) -> int | None:
        """A free slot taken at once (its epoch, to give back with the outcome), or None."""
        if self.in_flight < self.window.limit and not self.waiters:
            self.in_flight += 1
            return self.window.epoch
        return None

    async def acquire(self) -> int:
        """Wait for a free slot and take it (nothing is taken if cancelled while waiting);
        the epoch to give back with the request's outcome."""
        while self.in_flight >= self.window.limit:
            waiter = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self.waiters:
                    self.waiters.remove(waiter)
        self.in_flight += 1
        return self.window.epoch

    def release(self, epoch: int, signal: Signal | None) -> None:
        """Give the slot back, with what the request's outcome says (None: it was not sent)."""
        self.in_flight -= 1
        if signal is not None:
            self.window.observe(epoch, signal)
        free = self.window.limit - self.in_flight
        while free > 0 and self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1


__all__ = ["Concurrency", "Signal", "Window", "signal_of"]
