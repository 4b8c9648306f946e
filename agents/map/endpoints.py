"""Where each request goes: one endpoint, or several sharing a job (``--endpoint``).

A :class:`Lane` is one endpoint as the run uses it: its client, its own window of requests in
flight (adaptive, capped by ``jobs=``), its own rate budgets (``rpm=``, ``tpm=``, or learned
from its headers), its health, and its figures for the summary. The :class:`Router` gives each
request a lane and a slot in it; a retry asks again, so it may go elsewhere.

With several lanes, a request goes to the lane that has had the fewest requests for its weight
among those with a free slot and no request already waiting on its budget; so requests split
by weight while every lane keeps up, and the others take what a full or slow one cannot. A lane
is taken out of use when it fails:

- it cannot be reached (connection refused, no route): cooled down at once, the request sent
  elsewhere without spending an attempt (it reached no server, so nothing was paid);
- ``COOL_AFTER`` server errors or timeouts in a row: cooled down (those requests were retried
  as usual, through the router);
- a cooled-down lane gets one request (a probe) when its time is up: an answer puts it back in
  use, a failure cools it down twice as long (at most ``COOLDOWN_MAX`` seconds);
- 401/403 (its key) or 404 (it does not serve the model): disabled for the run, named on
  stderr; its request is sent elsewhere at once.

The run stops (:class:`~agents.errors.Fatal`, exit 1) only when no lane can take a request:
every lane disabled, or every lane unreachable before anything succeeded, or every lane down
(``DOWN_AFTER`` failed probes in a row). With one endpoint nothing of this applies: its failures
are retried and judged as they always were (``agents.map.record``, the circuit breaker).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

from agents.errors import CallError, Fatal, UsageError
from agents.map.congestion import Concurrency, Signal, Slot
from agents.map.http import Client, Endpoint, Usage
from agents.map.limits import Budgets

#: Server errors or timeouts in a row that cool a lane down.
COOL_AFTER = 3
#: The first cooldown, in seconds; each failed probe doubles it, up to COOLDOWN_MAX.
COOLDOWN = 1.0
COOLDOWN_MAX = 30.0
#: Failed probes in a row after which a lane counts as down (about 15 s of failures).
DOWN_AFTER = 4

#: The error types that say the lane, not the record, is at fault.
LANE_FAULTS = {"server_error", "timeout", "connection_error", "truncated_body", "invalid_response"}


@dataclass(frozen=True)
class EndpointSpec:
    """One ``--endpoint 'URL [weight=N] [jobs=N] [rpm=N] [tpm=N] [key-env=NAME] [model=NAME]'``."""

    url: str
    weight: float = 1.0
    jobs: int | None = None
    rpm: float | None = None
    tpm: float | None = None
    key_env: str | None = None
    model: str | None = None


_SETTINGS = ("weight", "jobs", "rpm", "tpm", "key-env", "model")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_endpoint(text: str) -> EndpointSpec:
    """An endpoint from its flag's text; a UsageError saying what is wrong."""
    words = text.split()
    if not words:
        raise UsageError("--endpoint needs a URL", "e.g. --endpoint 'http://host:8000/v1 weight=2'")
    url, settings = words[0], words[1:]
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(
            f"--endpoint {text!r}: {url!r} is not an http(s) URL",
            "the URL comes first, then NAME=VALUE settings: 'http://host:8000/v1 weight=2'",
        )
    values: dict[str, str] = {}
    for setting in settings:
        name, equals, value = setting.partition("=")
        if not equals or name not in _SETTINGS or not value:
            raise UsageError(
                f"--endpoint {text!r}: {setting!r} is not one of "
                + ", ".join(f"{known}=..." for known in _SETTINGS)
            )
        if name in values:
            raise UsageError(f"--endpoint {text!r}: {name}= is given twice")
        values[name] = value
    return EndpointSpec(
        url=url.rstrip("/"),
        weight=_number(text, values, "weight", 1.0),
        jobs=int(_number(text, values, "jobs", 0, whole=True)) or None,
        rpm=_number(text, values, "rpm", 0.0) or None,
        tpm=_number(text, values, "tpm", 0.0) or None,
        key_env=_env_name(text, values.get("key-env")),
        model=values.get("model"),
    )


def _number(
    text: str, values: dict[str, str], name: str, default: float, whole: bool = False
) -> float:
    raw = values.get(name)
    if raw is None:
        return default
    try:
        value = float(int(raw)) if whole else float(raw)
    except ValueError:
        kind = "a whole number" if whole else "a number"
        raise UsageError(f"--endpoint {text!r}: {name}= takes {kind}, not {raw!r}") from None
    if not value > 0 or value == float("inf"):
        raise UsageError(f"--endpoint {text!r}: {name}= must be positive, not {raw}")
    return value


def _env_name(text: str, name: str | None) -> str | None:
    if name is not None and not _ENV_NAME.fullmatch(name):
        raise UsageError(
            f"--endpoint {text!r}: key-env= names an environment variable, not {name!r}",
            "the key itself never goes on a command line: export it and name the variable",
        )
    return name


def endpoint_text(entry: object, place: str) -> str:
    """A job file's ``llm.endpoints`` entry as its flag's text: the same string, or a mapping
    with ``url`` and the settings (``key_env`` or ``key-env``)."""
    if isinstance(entry, str):
        return entry
    if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
        raise UsageError(
            f"{place}: expected a URL with settings ('http://host/v1 weight=2') "
            "or a mapping with url:"
        )
    words = [entry["url"]]
    for key, value in entry.items():
        if key == "url":
            continue
        name = str(key).replace("_", "-")
        if name not in _SETTINGS or isinstance(value, bool | dict | list) or value is None:
            raise UsageError(f"{place}.{key}: unknown setting or not a single value")
        words.append(f"{name}={value}")
    return " ".join(words)


def display_name(url: str) -> str:
    """How an endpoint is named to people: its URL without user or password."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def lane_endpoint(spec: EndpointSpec, base: Endpoint) -> Endpoint:
    """The endpoint a lane talks to: the spec's URL and key (``key-env=``, else the job's),
    the job's headers and timeout."""
    key = base.api_key
    if spec.key_env is not None:
        key = os.environ.get(spec.key_env) or None
        if key is None:
            raise UsageError(
                f"--endpoint {display_name(spec.url)}: ${spec.key_env} is not set",
                f"export {spec.key_env} with that endpoint's API key",
            )
    return Endpoint(spec.url, key, dict(base.headers), base.timeout)


@dataclass
class LaneFigures:
    """One lane's share of the run, for the summary and --stats."""

    requests: int = 0
    answers: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)

    def failed(self, error_type: str) -> None:
        self.errors[error_type] = self.errors.get(error_type, 0) + 1

    def answered(self, seconds: float, usage: Usage) -> None:
        self.answers += 1
        if len(self.latencies) < 10_000:  # (a sample is enough for the percentiles)
            self.latencies.append(seconds)
        self.usage.add(usage)


class Lane:
    """One endpoint as the run uses it (see the module's docstring)."""

    def __init__(
        self,
        endpoint: Endpoint,
        client: Client,
        concurrency: Concurrency | None,
        budgets: Budgets | None,
        *,
        weight: float = 1.0,
        model: str | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.name = display_name(endpoint.base_url)
        self.client = client
        self.concurrency = concurrency
        self.budgets = budgets
        self.weight = weight
        self.model = model  # the model's name on this server, when it names it otherwise
        self.paused_until = 0.0  # a server's reset to wait for (remaining: 0)
        self.figures = LaneFigures()
        self.sent = 0  # requests given to it, for the split by weight
        self.disabled: str | None = None  # why, when it is out for the run
        self.cool_until = 0.0
        self.cooldown = COOLDOWN
        self.in_a_row = 0  # server errors or timeouts in a row
        self.failed_probes = 0
        self.probing = False
        self.unreachable = False  # its last failure: no connection at all

    @property
    def cooling(self) -> bool:
        return self.cool_until > 0.0

    def usable(self, now: float) -> bool:
        """Whether a request may be given to it now."""
        if self.disabled is not None or self.concurrency is None:
            return False
        if self.cooling:  # one probe at a time once its time is up
            return now >= self.cool_until and self.concurrency.in_flight == 0
        if self.concurrency.in_flight >= self.concurrency.window.limit:
            return False
        budgets = self.budgets
        return budgets is None or not budgets.active or not budgets.turn.locked()

    def cool(self, now: float) -> None:
        self.cool_until = now + self.cooldown
        self.cooldown = min(COOLDOWN_MAX, self.cooldown * 2)
        self.in_a_row = 0

    def recovered(self) -> None:
        self.cool_until = 0.0
        self.cooldown = COOLDOWN
        self.in_a_row = self.failed_probes = 0
        self.probing = self.unreachable = False


class Router:
    """Gives each request a lane and a slot in it (see the module's docstring)."""

    def __init__(
        self,
        lanes: list[Lane],
        warn: Callable[..., None] = lambda message, hint=None: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert lanes
        self.lanes = lanes
        self.warn = warn
        self.clock = clock
        self.several = len(lanes) > 1
        self.any_success = False
        #: With fallback models, a 404 says the model is unknown, not that the endpoint is
        #: wrong: the Mapper moves on to the next model, and the endpoint stays in use.
        self.not_found_is_the_models = False
        self._changed: asyncio.Event | None = None

    @property
    def first(self) -> Lane:
        return self.lanes[0]

    def try_take(self) -> tuple[Lane, Slot | None] | None:
        """A lane and a free slot in it taken at once, or None (then :meth:`take` waits)."""
        lane = self._choose(self.clock()) if self.several else self.first
        if lane is None:
            return None
        concurrency = lane.concurrency
        if concurrency is None:
            return lane, None
        slot = concurrency.try_acquire()
        if slot is None:
            return None
        if lane.cooling:
            lane.probing = True
        lane.sent += 1
        return lane, slot

    async def take(self) -> tuple[Lane, Slot | None]:
        """A lane and a slot in it, waiting for one if need be (cancel to stop waiting); no
        slot when the lane has no window (a run without one: batch mode's)."""
        while True:
            taken = self.try_take()
            if taken is not None:
                return taken
            if not self.several:  # its own queue, first come first served
                lane = self.first
                assert lane.concurrency is not None
                slot = await lane.concurrency.acquire()
                lane.sent += 1
                return lane, slot
            self._check_alive()
            await self._wait(self.clock())

    def _choose(self, now: float) -> Lane | None:
        usable = [lane for lane in self.lanes if lane.usable(now)]
        if not usable:
            return None
        probes = [lane for lane in usable if lane.cooling]
        if probes:  # a lane whose cooldown is over is tried at once
            lane = probes[0]
            self._catch_up(lane)
            return lane
        return min(usable, key=lambda lane: (lane.sent + 1) / lane.weight)

    def _catch_up(self, lane: Lane) -> None:
        """A lane back in use starts level with the others (for its weight), not owed the
        requests it missed, which it would get all at once."""
        others = [other for other in self.lanes if other is not lane and other.disabled is None]
        if others:
            level = min(other.sent / other.weight for other in others)
            lane.sent = max(lane.sent, int(level * lane.weight))

    def _check_alive(self) -> None:
        """Fatal when no lane will take a request again."""
        live = [lane for lane in self.lanes if lane.disabled is None]
        if not live:
            raise Fatal(
                "auth",
                "every endpoint is disabled: "
                + "; ".join(f"{lane.name}: {lane.disabled}" for lane in self.lanes),
            )
        if all(lane.cooling for lane in live):
            if not self.any_success and all(lane.unreachable for lane in live):
                raise Fatal(
                    "connection_error",
                    "cannot reach any endpoint: " + ", ".join(lane.name for lane in live),
                )
            if all(lane.failed_probes >= DOWN_AFTER for lane in live):
                raise Fatal(
                    "connection_error",
                    "every endpoint is down: " + ", ".join(lane.name for lane in live),
                )

    async def _wait(self, now: float) -> None:
        """Until a slot is given back or a cooldown ends."""
        if self._changed is None:
            self._changed = asyncio.Event()
        cooling = [lane.cool_until for lane in self.lanes if lane.cooling and lane.disabled is None]
        timeout = max(0.001, min(cooling) - now) if cooling else None
        event = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
        if event.is_set() and self._changed is event:
            self._changed = None  # the next waiters wait for the next change

    def release(self, lane: Lane, slot: Slot | None, signal: Signal | None) -> None:
        if lane.concurrency is not None and slot is not None:
            lane.concurrency.release(slot, signal)
        self.wake()

    def answered(self, lane: Lane) -> None:
        self.any_success = True
        lane.in_a_row = 0
        if lane.cooling and not lane.probing:
            return  # sent before it was cooled down: its probe decides
        if lane.cooling or lane.failed_probes:
            if lane.cooling:
                self.warn(f"endpoint {lane.name} answers again: back in use")
            lane.recovered()

    def failed(self, lane: Lane, error: CallError) -> bool:
        """A request to ``lane`` failed with ``error``: whether to send it elsewhere at once
        (the lane is out of use and the request cost nothing) rather than let it count."""
        lane.figures.failed(error.error_type)
        if not self.several:
            return False
        probe, lane.probing = lane.probing, False
        now = self.clock()
        if (
            isinstance(error, Fatal)
            and error.error_type == "not_found"
            and self.not_found_is_the_models
        ):
            return False
        if isinstance(error, Fatal) and error.error_type in ("auth", "not_found"):
            if lane.disabled is None:
                lane.disabled = error.message
                what = "its key is refused" if error.error_type == "auth" else "no such model"
                self.warn(
                    f"endpoint {lane.name} is disabled for this run ({what}: {error.message}); "
                    "the others go on",
                    "check its key-env=" if error.error_type == "auth" else "check its model=",
                )
            self.wake()
            return True
        if error.error_type not in LANE_FAULTS:
            return False
        not_sent = error.not_sent
        lane.unreachable = not_sent
        if probe:
            lane.failed_probes += 1
            lane.cool(now)
        elif not_sent or (lane.in_a_row + 1 >= COOL_AFTER):
            if not lane.cooling:
                self.warn(
                    f"endpoint {lane.name} fails ({error.message}); "
                    f"its requests go to the others, and it is tried again in "
                    f"{lane.cooldown:g}s"
                )
                lane.cool(now)
        else:
            lane.in_a_row += 1
        self.wake()
        return not_sent

    def wake(self) -> None:
        if self._changed is not None:
            self._changed.set()

    async def close(self) -> None:
        for lane in self.lanes:
            await lane.client.close()


__all__ = [
    "EndpointSpec",
    "Lane",
    "LaneFigures",
    "Router",
    "display_name",
    "endpoint_text",
    "lane_endpoint",
    "parse_endpoint",
]
