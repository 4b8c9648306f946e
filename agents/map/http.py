"""A thin OpenAI-compatible chat-completions client over aiohttp, and what its errors mean.

Every failure of a call is one of the three kinds of :class:`agents.errors.CallError`, which
decide what the run does with it (drawn in ``agents.errors`` and agents-map(1)); the HTTP status
and the transport error that make each kind are decided here, in :meth:`Client.complete` and
:func:`_http_error`.

Why aiohttp and not the ``openai`` SDK or ``httpx``: measured on this machine (README, design
notes), only a bare aiohttp client keeps up at hundreds of requests in flight.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import re
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from agents.errors import CallError, Fatal, RecordFailed, Retryable, UsageError
from agents.map.streaming import assemble

if TYPE_CHECKING:
    import aiohttp

DEFAULT_BASE_URL = "https://api.openai.com/v1"


@dataclass(frozen=True)
class Endpoint:
    base_url: str
    api_key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = 60.0
    #: --stream: answers asked for as server-sent events and put together (see
    #: :mod:`agents.map.streaming`); ``idle_timeout``: the longest silence between two events.
    stream: bool = False
    idle_timeout: float | None = None

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def redact(self, text: str) -> str:
        """``text`` with the API key blotted out, wherever a server or library echoed it."""
        if self.api_key and len(self.api_key) >= 4:
            text = text.replace(self.api_key, "[redacted]")
        return text


def checked_url(url: str, flag: str) -> str:
    """A server's base URL as given to ``flag``, or a UsageError saying what is wrong with it:
    not http(s), no host, a port out of range, or a user and password in it (those go on a
    command line, visible to every user through ps, and are never sent: give the key in an
    environment variable)."""
    example = "e.g. http://127.0.0.1:8080/v1"
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as error:  # (an unclosed [ of an IPv6 address)
        raise UsageError(f"{flag} {url!r}: not a URL ({error})", example) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{flag} {url!r}: not an http(s) URL", example)
    try:
        parts.port  # noqa: B018  (raises for a port that is not one)
    except ValueError:
        raise UsageError(
            f"{flag} {url!r}: the port is not a number from 1 to 65535", example
        ) from None
    if parts.username is not None or parts.password is not None:
        raise UsageError(
            f"{flag}: the URL holds a user name or password, which agents-map does not send",
            "give the key in OPENAI_API_KEY (or --api-key-env NAME), or for one of several "
            "endpoints in key-env=NAME; a header the server needs with --header",
        )
    return url


def served_models(endpoint: Endpoint, timeout: float = 10.0) -> list[str] | None:
    """The models the server lists at ``GET /models`` (the IDs, in its order), or None when it
    does not answer the question (no such route, unreachable, not the OpenAI shape)."""
    request = urllib.request.Request(
        endpoint.base_url.rstrip("/") + "/models",
        headers={
            **endpoint.headers,
            **({"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=min(timeout, endpoint.timeout)) as response:
            body = orjson.loads(response.read())
    except (OSError, ValueError):  # URLError and HTTPError are OSErrors; bad JSON a ValueError
        return None
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        return None
    return [str(entry["id"]) for entry in data if isinstance(entry, dict) and entry.get("id")]


@dataclass
class Usage:
    prompt: int = 0
    completion: int = 0
    cached: int = 0
    reasoning: int = 0

    def add(self, other: Usage) -> None:
        self.prompt += other.prompt
        self.completion += other.completion
        self.cached += other.cached
        self.reasoning += other.reasoning

    @classmethod
    def from_response(cls, body: dict[str, Any]) -> Usage:
        usage = body.get("usage") or {}
        if not isinstance(usage, dict):
            return cls()
        prompt_details = usage.get("prompt_tokens_details") or {}
        completion_details = usage.get("completion_tokens_details") or {}
        return cls(
            prompt=_int(usage.get("prompt_tokens")),
            completion=_int(usage.get("completion_tokens")),
            cached=_int(
                prompt_details.get("cached_tokens") if isinstance(prompt_details, dict) else 0
            ),
            reasoning=_int(
                completion_details.get("reasoning_tokens")
                if isinstance(completion_details, dict)
                else 0
            ),
        )


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@dataclass(slots=True)  # (not frozen: a frozen dataclass costs a cache hit 0.8 µs to make)
class Completion:
    content: str | None
    finish_reason: str | None
    refusal: str | None
    usage: Usage
    limits: dict[str, float] = field(default_factory=dict)  # x-ratelimit-limit-* per minute
    windows: dict[str, tuple[float, float]] = field(default_factory=dict)  # (left, reset s)
    pause: float | None = None  # remaining-* reached 0: seconds until the budget resets
    first_token: float | None = None  # --stream: seconds from sending to the first event
    usage_given: bool = True  # whether the answer said what it used (not all servers do)


# Retry-After and OpenAI's rate-limit headers --------------------------------------------------
#
# Each header is parsed by one function: retry-after-ms and Retry-After by server_wait,
# x-ratelimit-limit-* by _limit, x-ratelimit-remaining-* by _remaining and x-ratelimit-reset-*
# by _reset; the rest is built on those.

#: The budgets OpenAI's headers name: x-ratelimit-{limit,remaining,reset}-{requests,tokens}.
BUDGETS = ("requests", "tokens")

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float | None:
    """OpenAI's reset durations: ``1s``, ``6m0s``, ``20ms``, ``1h2m3.5s`` (or plain seconds)."""
    text = text.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return sum(float(number) * _UNIT[unit] for number, unit in parts)


def server_wait(headers: Any, now: float | None = None) -> float | None:
    """How long the server asks us to wait: retry-after-ms, Retry-After, x-ratelimit-reset-*."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds:
        try:
            return max(0.0, float(milliseconds) / 1000)
        except ValueError:
            pass
    after = headers.get("retry-after")
    if after:
        try:
            return max(0.0, float(after))
        except ValueError:
            moment = email.utils.parsedate_to_datetime(after) if _is_date(after) else None
            if moment is not None:
                return max(0.0, moment.timestamp() - (now if now is not None else time.time()))
    known = [reset for name in BUDGETS if (reset := _reset(headers, name)) is not None]
    return max(known) if known else None


def _is_date(text: str) -> bool:
    try:
        return email.utils.parsedate_to_datetime(text) is not None
    except (TypeError, ValueError):
        return False


def _limit(headers: Any, name: str) -> float | None:
    """x-ratelimit-limit-{name}: the budget per minute, when it is a positive number."""
    value = headers.get(f"x-ratelimit-limit-{name}")
    with contextlib.suppress(TypeError, ValueError):
        if value is not None and float(value) > 0:
            return float(value)
    return None


def _remaining(headers: Any, name: str) -> float | None:
    """x-ratelimit-remaining-{name}: what is left of the current window."""
    value = headers.get(f"x-ratelimit-remaining-{name}")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _reset(headers: Any, name: str) -> float | None:
    """x-ratelimit-reset-{name}: seconds until the current window resets."""
    value = headers.get(f"x-ratelimit-reset-{name}")
    return parse_duration(value) if value else None


def learned_limits(headers: Any) -> dict[str, float]:
    """OpenAI's x-ratelimit-limit-requests / -tokens (per minute), when present."""
    return {name: limit for name in BUDGETS if (limit := _limit(headers, name)) is not None}


def window_state(headers: Any, name: str) -> tuple[float, float] | None:
    """(what is left, seconds until the reset) of the server's current window, if it says."""
    left = _remaining(headers, name)
    reset = _reset(headers, name)
    return (left, reset) if left is not None and reset is not None else None


def remaining_zero_wait(windows: dict[str, tuple[float, float]]) -> float | None:
    """When a window (see :func:`window_state`) says its budget is spent, seconds to its reset."""
    waits = [reset for left, reset in windows.values() if left <= 0]
    return max(waits) if waits else None


def with_rate_limits(completion: Completion, headers: Any) -> Completion:
    """``completion`` with what the x-ratelimit-* headers say: limits, windows, a pause.

    Only a response that names a limit is read further; others (a local server's) cost two
    lookups.
    """
    if "x-ratelimit-limit-requests" not in headers and "x-ratelimit-limit-tokens" not in headers:
        return completion
    windows = {
        name: state for name in BUDGETS if (state := window_state(headers, name)) is not None
    }
    return dataclasses.replace(
        completion,
        limits=learned_limits(headers),
        windows=windows,
        pause=remaining_zero_wait(windows),
    )


# The client -----------------------------------------------------------------------------------


def proxy_for(url: str) -> str | None:
    """The proxy the environment names for ``url``, unless NO_PROXY exempts its host."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)


RETRYABLE_STATUS = {408, 409, 429}
FATAL_STATUS = {401: "auth", 403: "auth", 404: "not_found"}


class Client:
    """One shared aiohttp session; :meth:`complete` makes one call and classifies its outcome.

    The session, and aiohttp itself, are made at the first request: a rerun answered from the
    cache sends none, and importing aiohttp would be a tenth of its time."""

    def __init__(self, endpoint: Endpoint, connections: int) -> None:
        self.endpoint = endpoint
        self.connections = connections
        self._session: aiohttp.ClientSession | None = None
        self.succeeded = False

    def open(self) -> None:
        """Make the session, once: before a request takes its slot and rate budget, since
        importing aiohttp would delay it past its place in the budget."""
        _ = self.session

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            import aiohttp

            endpoint = self.endpoint
            headers = {"Content-Type": "application/json", **endpoint.headers}
            if endpoint.api_key:
                headers["Authorization"] = f"Bearer {endpoint.api_key}"
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self.connections, limit_per_host=0, enable_cleanup_closed=True
                ),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=endpoint.timeout),
                # HTTPS_PROXY, HTTP_PROXY and NO_PROXY are looked up once here: aiohttp's
                # trust_env would look them up again, in a thread, for every request.
                proxy=proxy_for(endpoint.url),
                auto_decompress=True,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def complete(self, body: dict[str, Any]) -> Completion:
        import aiohttp  # (imported once, by the session)

        redact = self.endpoint.redact
        streamed: tuple[dict[str, Any], float] | None = None
        if self.endpoint.stream:
            body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        sent = time.monotonic()
        idle = self.endpoint.idle_timeout if self.endpoint.stream else None
        # --idle-timeout covers the wait for the answer's headers too (a server that holds
        # them back while it reads the prompt): aiohttp's limit between two reads.
        extra: dict[str, Any] = (
            {"timeout": aiohttp.ClientTimeout(total=self.endpoint.timeout, sock_read=idle)}
            if idle
            else {}
        )
        try:
            async with self.session.post(
                self.endpoint.url, data=orjson.dumps(body), **extra
            ) as response:
                status = response.status
                headers = response.headers
                if self.endpoint.stream and status < 400 and _is_event_stream(headers):
                    streamed = await assemble(response.content, self.endpoint.idle_timeout, sent)
                    raw = b""
                else:
                    raw = await response.read()
        except aiohttp.ServerTimeoutError:
            if idle is None:
                raise Retryable("timeout", f"no answer within {self.endpoint.timeout:g}s") from None
            raise Retryable(
                "idle_timeout", f"the answer stalled: nothing for {idle:g}s (--idle-timeout)"
            ) from None
        except TimeoutError:
            raise Retryable("timeout", f"no answer within {self.endpoint.timeout:g}s") from None
        except aiohttp.ClientPayloadError as error:
            raise Retryable(
                "truncated_body", f"the response was cut short: {redact(str(error))}"
            ) from None
        except aiohttp.ClientConnectorError as error:
            kind = Retryable if self.succeeded else Fatal
            unreachable = kind(
                "connection_error",
                f"cannot reach {self.endpoint.base_url}: {redact(str(error.os_error))}",
            )
            unreachable.not_sent = True
            raise unreachable from None
        except (aiohttp.ClientError, OSError) as error:
            message = redact(str(error)) or type(error).__name__
            raise Retryable("connection_error", f"connection failed: {message}") from None
        if status >= 400:
            raise _http_error(status, raw, headers, redact)
        if streamed is not None:
            whole, first = streamed
            completion = with_rate_limits(_completion(whole), headers)
            completion.first_token = first
            self.succeeded = True
            return completion
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = _with_lone_surrogates(raw)
            if parsed is None:
                raise Retryable("invalid_response", "the server's answer is not JSON") from None
        completion = with_rate_limits(_completion(parsed), headers)
        self.succeeded = True
        return completion


def _is_event_stream(headers: Any) -> bool:
    """Whether the answer is server-sent events (a server that does not stream answers JSON,
    read as usual)."""
    return "text/event-stream" in str(headers.get("Content-Type", "")).lower()


def _http_error(status: int, raw: bytes, headers: Any, redact: Any) -> CallError:
    detail = _error_detail(raw)
    message = redact(f"HTTP {status}" + (f": {detail}" if detail else ""))
    if status in RETRYABLE_STATUS or status >= 500:
        kind = (
            "rate_limited"
            if status == 429
            else ("server_error" if status >= 500 else "http_" + str(status))
        )
        error = Retryable(kind, message, status, server_wait(headers))
        error.exhausted = status == 429 and any(
            (left := _remaining(headers, name)) is not None and left <= 0 for name in BUDGETS
        )
        return error
    if status in FATAL_STATUS:
        return Fatal(FATAL_STATUS[status], message, status)
    if status == 400 and "context" in detail.lower() and "length" in detail.lower():
        return RecordFailed("context_too_long", message, status)
    return RecordFailed("bad_request", message, status)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _with_lone_surrogates(raw: bytes) -> Any:
    """An answer that orjson refuses only for an escaped half of a surrogate pair (a model that
    cut an emoji in two): read by the standard parser, each half made U+FFFD, so that the answer
    paid for is kept rather than asked for again. None when it is not JSON at all."""
    import json

    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None

    def clean(item: Any) -> Any:
        if isinstance(item, str):
            return _SURROGATE.sub("\ufffd", item)
        if isinstance(item, list):
            return [clean(element) for element in item]
        if isinstance(item, dict):
            return {clean(key): clean(element) for key, element in item.items()}
        return item

    return clean(value)


def _error_detail(raw: bytes) -> str:
    """The server's own words: OpenAI's {"error": {"message": ...}} or the body's start."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[:200].decode("utf-8", errors="replace").strip()
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:500]
        if isinstance(error, str):
            return error[:500]
    return orjson.dumps(body)[:200].decode()


def _completion(body: object) -> Completion:
    if not isinstance(body, dict):
        raise Retryable("invalid_response", "the server's answer is not a JSON object")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise Retryable("invalid_response", "the server's answer has no choices")
    choice = choices[0]
    message = choice.get("message") or {}
    if not isinstance(message, dict):
        message = {}
    content = message.get("content")
    refusal = message.get("refusal")
    return Completion(
        content=content if isinstance(content, str) else None,
        finish_reason=choice.get("finish_reason")
        if isinstance(choice.get("finish_reason"), str)
        else None,
        refusal=refusal if isinstance(refusal, str) and refusal else None,
        usage=Usage.from_response(body),
        usage_given=isinstance(body.get("usage"), dict),
    )
