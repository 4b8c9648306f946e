"""Where each request goes: one endpoint, or several sharing a job (``--endpoint``).

A :class:`Lane` is one endpoint as the run uses it: its client, its own window of requests in
flight (adaptive, capped by ``jobs=``), its own rate budgets (``rpm=``, ``tpm=``, or learned
from its headers), its health, and its figures for the summary. The :class:`Router` gives each
request a lane and a slot in it; a retry asks again, so it may go elsewhere.

With several lanes, a request goes to the lane with the fewest requests in flight for its
weight (then the fewest sent so far, for its weight) among those with a free slot, no request
already waiting on its budget and no pause a 429 asked for; so requests split by weight while
every lane keeps up, and a slow or hanging lane, whose requests stay in flight, gets fewer: the
others take what it cannot. A lane is taken out of use when it fails:

- a 429: no request is given to it until its Retry-After (else a second) is over, and the
  request is sent to another lane at once when one is free of such a pause (a 429 is not paid);

- it cannot be reached (connection refused, no route): cooled down at once, the request sent
  elsewhere without spending an attempt (it reached no server, so nothing was paid);
- ``COOL_AFTER`` server errors or timeouts in a row: cooled down (those requests were retried
  as usual, through the router);
- a cooled-down lane gets one request (a probe) when its time is up: an answer puts it back in
  use, a failure cools it down twice as long (at most ``COOLDOWN_MAX`` seconds);
- 401/403 (its key): disabled for the run, named on stderr; its request is sent elsewhere at
  once;
- 404 (it does not serve that model, or its URL is wrong): that model is not asked of it again,
  and its request goes to another lane that may serve it; a lane that serves none of the run's
  models (the primary and the fallbacks) is disabled as a bad key is. Only when no lane is left
  that may serve a model is the model unknown to the run (:class:`~agents.errors.Fatal`
  ``not_found``: the next fallback model, else the end of the run).

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
from dataclasses import dataclass, field, replace

from agents.errors import CallError, Fatal, UsageError
from agents.map.congestion import Concurrency, Signal, Slot
from agents.map.http import Client, Endpoint, Usage, checked_url
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
    if "://" not in url:
        raise UsageError(
            f"--endpoint {text!r}: {url!r} is not an http(s) URL",
            "the URL comes first, then NAME=VALUE settings: 'http://host:8000/v1 weight=2'",
        )
    checked_url(url, "--endpoint")
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
        if name not in _SETTINGS:
            raise UsageError(f"{place}.{key}: unknown setting (known: {', '.join(_SETTINGS)})")
        if isinstance(value, bool | dict | list) or value is None or not str(value).strip():
            raise UsageError(f"{place}.{key}: expected a single value, got {value!r}")
        if len(str(value).split()) != 1:  # (it would be read as more settings)
            raise UsageError(f"{place}.{key}: one value without spaces, not {value!r}")
        words.append(f"{name}={value}")
    return " ".join(words)


def display_name(url: str) -> str:
    """How an endpoint is named to people: its URL without user or password."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def lane_names(specs: list[EndpointSpec]) -> list[str]:
    """How each endpoint is named in messages and the summary: its URL, with its key's
    variable when one URL is given with several keys."""
    urls = [spec.url for spec in specs]
    return [
        display_name(spec.url)
        + (f" (key-env={spec.key_env or 'none'})" if urls.count(spec.url) > 1 else "")
        for spec in specs
    ]


def lane_endpoint(spec: EndpointSpec, base: Endpoint, need: bool = True) -> Endpoint:
    """The endpoint a lane talks to: the spec's URL and key (``key-env=``, else the job's),
    the job's headers and timeout. ``need``: a ``key-env=`` that is not set is an error (not
    for a dry run, which sends nothing)."""
    key = base.api_key
    if spec.key_env is not None:
        key = os.environ.get(spec.key_env) or None
        if key is None and need:
            raise UsageError(
                f"--endpoint {display_name(spec.url)}: ${spec.key_env} is not set",
                f"export {spec.key_env} with that endpoint's API key",
            )
    return replace(base, base_url=spec.url, api_key=key, headers=dict(base.headers))


@dataclass
class LaneFigures:
    """One lane's share of the run, for the summary and --stats."""

    requests: int = 0
    answers: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    by_model: dict[str, Usage] = field(default_factory=dict)  # the same, per model answering

    def failed(self, error_type: str) -> None:
        self.errors[error_type] = self.errors.get(error_type, 0) + 1

    def answered(self, seconds: float, usage: Usage, model: str) -> None:
        self.answers += 1
        if len(self.latencies) < 10_000:  # (a sample is enough for the percentiles)
            self.latencies.append(seconds)
        self.usage.add(usage)
        self.by_model.setdefault(model, Usage()).add(usage)


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
        name: str | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.name = name or display_name(endpoint.base_url)
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
        self.unknown: set[str] = set()  # the run's models its server answered 404 for

    @property
    def cooling(self) -> bool:
        return self.cool_until > 0.0

    def serves(self, model: str | None) -> bool:
        """Whether it is in use for requests to ``model`` (None: the job's), as far as known."""
        return self.disabled is None and (model is None or model not in self.unknown)

    def usable(self, now: float, model: str | None = None) -> bool:
        """Whether a request (to ``model``) may be given to it now."""
        if not self.serves(model) or self.concurrency is None:
            return False
        if self.cooling:  # one probe at a time once its time is up
            return now >= self.cool_until and self.concurrency.in_flight == 0
        if self.concurrency.in_flight >= self.concurrency.window.limit:
            return False
        if self.paused_until > now:
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


def _load(lane: Lane) -> tuple[float, float]:
    """What a lane has to do, for its weight: its requests in flight, then all it was given."""
    in_flight = lane.concurrency.in_flight if lane.concurrency is not None else 0
    return (in_flight + 1) / lane.weight, (lane.sent + 1) / lane.weight


def _why_out(lane: Lane) -> str:
    return lane.disabled or "it does not serve " + ", ".join(sorted(lane.unknown))


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
        #: The run's models (the primary, then the fallbacks): a lane that answers 404 for
        #: each of them serves none, and is disabled.
        self.models: tuple[str, ...] = ()
        self._changed: asyncio.Event | None = None

    @property
    def first(self) -> Lane:
        return self.lanes[0]

    def try_take(self, model: str | None = None) -> tuple[Lane, Slot | None] | None:
        """A lane (that may serve ``model``; None: the job's) and a free slot in it taken at
        once, or None (then :meth:`take` waits)."""
        lane = self._choose(self.clock(), model) if self.several else self.first
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

    async def take(self, model: str | None = None) -> tuple[Lane, Slot | None]:
        """A lane (for ``model``) and a slot in it, waiting for one if need be (cancel to stop
        waiting); no slot when the lane has no window (a run without one: batch mode's)."""
        while True:
            taken = self.try_take(model)
            if taken is not None:
                return taken
            if not self.several:  # its own queue, first come first served
                lane = self.first
                assert lane.concurrency is not None
                slot = await lane.concurrency.acquire()
                lane.sent += 1
                return lane, slot
            self._check_alive(model)
            await self._wait(self.clock())

    def _choose(self, now: float, model: str | None) -> Lane | None:
        usable = [lane for lane in self.lanes if lane.usable(now, model)]
        if not usable:
            return None
        probes = [lane for lane in usable if lane.cooling]
        if probes:  # a lane whose cooldown is over is tried at once
            lane = probes[0]
            self._catch_up(lane)
            return lane
        return min(usable, key=_load)

    def _catch_up(self, lane: Lane) -> None:
        """A lane back in use starts level with the others (for its weight), not owed the
        requests it missed, which it would get all at once."""
        others = [other for other in self.lanes if other is not lane and other.disabled is None]
        if others:
            level = min(other.sent / other.weight for other in others)
            lane.sent = max(lane.sent, int(level * lane.weight))

    def _check_alive(self, model: str | None = None) -> None:
        """Fatal when no lane will take a request (to ``model``) again."""
        if not any(lane.disabled is None for lane in self.lanes):
            raise Fatal(
                "auth",
                "every endpoint is disabled: "
                + "; ".join(f"{lane.name}: {lane.disabled}" for lane in self.lanes),
            )
        live = [lane for lane in self.lanes if lane.serves(model)]
        if not live:  # (a model every server said it does not know)
            raise Fatal("not_found", f"no endpoint serves {model}")
        if all(lane.cooling for lane in live):
            if not self.any_success and all(lane.unreachable for lane in live):
                out = [lane for lane in self.lanes if lane not in live]
                raise Fatal(
                    "connection_error",
                    "cannot reach any endpoint: "
                    + ", ".join(lane.name for lane in live)
                    + "".join(f"; {lane.name} is out of use ({_why_out(lane)})" for lane in out),
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
        ends = [lane.cool_until for lane in self.lanes if lane.cooling and lane.disabled is None]
        ends += [lane.paused_until for lane in self.lanes if lane.paused_until > now]
        timeout = max(0.001, min(ends) - now) if ends else None
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

    def failed(self, lane: Lane, error: CallError, model: str) -> bool:
        """A request to ``lane`` (asking ``model``) failed with ``error``: whether to send it
        elsewhere at once (the lane is out of use for it, and the request cost nothing) rather
        than let it count."""
        lane.figures.failed(error.error_type)
        if not self.several:
            return False
        probe, lane.probing = lane.probing, False
        now = self.clock()
        if isinstance(error, Fatal) and error.error_type == "not_found":
            self._not_found(lane, error, model)
            self.wake()
            return any(other.serves(model) for other in self.lanes)
        if isinstance(error, Fatal) and error.error_type == "auth":
            self._disable(
                lane,
                f"its key is refused: {error.message}",
                "check the key it is given (its key-env=, else the job's)",
            )
            self.wake()
            return True
        if error.error_type == "rate_limited":
            pause = error.retry_after if error.retry_after and error.retry_after > 0 else 1.0
            lane.paused_until = max(lane.paused_until, now + pause)
            self.wake()
            return any(
                other.serves(model) and other.paused_until <= now and not other.cooling
                for other in self.lanes
            )
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

    def _not_found(self, lane: Lane, error: Fatal, model: str) -> None:
        """``lane``'s server does not know ``model`` (or its URL is wrong): not asked it again;
        disabled once it serves none of the run's models."""
        if model in lane.unknown or lane.disabled is not None:
            return
        lane.unknown.add(model)
        if all(name in lane.unknown for name in self.models or (model,)):
            self._disable(
                lane,
                f"it serves none of the models, {', '.join(self.models or (model,))}: "
                f"{error.message}",
                "check its URL, and its model=",
            )
        else:
            self.warn(
                f"endpoint {lane.name} does not serve {model} ({error.message}); "
                "the others are asked it"
            )

    def _disable(self, lane: Lane, why: str, hint: str) -> None:
        if lane.disabled is None:
            lane.disabled = why
            left = any(other.disabled is None for other in self.lanes)
            self.warn(
                f"endpoint {lane.name} is disabled for this run ({why}); "
                + ("the others go on" if left else "no endpoint is left"),
                hint,
            )

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
    "lane_names",
    "parse_endpoint",
]
