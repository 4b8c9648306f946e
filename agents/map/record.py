"""One record through the model: render the prompt, call with retries, read the answer.

:meth:`Mapper.process` returns the output record, or an error record for a record that failed;
it raises :class:`agents.errors.Fatal` when nothing can succeed (the run then stops).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from agents.contract.error_record import error_record
from agents.contract.ids import ID_KEY, MODEL_KEY, Record, canonical_id
from agents.errors import (
    AgentsError,
    CallError,
    CapReached,
    Fatal,
    MissingFields,
    NotSent,
    RecordFailed,
    Retryable,
    Unusable,
)
from agents.map.answer import Interpreter, Merger, reask_message
from agents.map.cache import CacheUse, RequestKeys
from agents.map.caps import CostCap
from agents.map.congestion import Concurrency, Signal, Window, signal_of
from agents.map.endpoints import Lane, Router
from agents.map.http import Client, Completion, Usage
from agents.map.limits import Budgets, GroupBusy, GroupRefused, GroupUnavailable
from agents.map.logs import LOGGER
from agents.map.prompt import (
    Message,
    ServerCount,
    Template,
    estimate_tokens,
    messages_for,
    missing_fields_message,
    prompt_token_bound,
)
from agents.map.sharing import Sharing
from agents.map.streaming import SO_FAR
from agents.map.usage import Price

Sleep = Callable[[float], Awaitable[None]]
T = TypeVar("T")

#: Answer tokens assumed for budgets and caps when no --max-tokens is given.
DEFAULT_OUTPUT_ESTIMATE = 256


#: The failures a fallback model may fix: a model the server does not know, a prompt too long
#: for it, a refusal, retries used up, an answer that stays unusable.
FALLBACK_ERRORS = frozenset(
    {
        "unknown_model",
        "context_too_long",
        "refusal",
        "truncated",
        "empty_response",
        "invalid_json",
        "schema_invalid",
        "not_an_object",
        "rate_limited",
        "server_error",
        "timeout",
        "connection_error",
        "truncated_body",
        "invalid_response",
        "http_408",
        "http_409",
    }
)

#: Tokens a re-ask's own message may take (it names the problem), for --max-cost.
REASK_TOKENS = 256


@dataclass
class CostHold:
    """What --max-cost holds for one record, and what its requests cost so far."""

    reserved: float
    spent: float = 0.0


@dataclass(slots=True)
class Prepared:
    """A record's first request, rendered and looked up in the cache when its batch was read."""

    messages: list[Message]
    key: bytes
    replayed: Completion | None  # the cache's answer, when it had one


#: What answers one record: (its output record, whether it succeeded).
Work = Callable[[], Awaitable[tuple[Record, bool]]]


@dataclass
class RequestShape:
    """What every request carries besides its messages."""

    model: str
    params: dict[str, Any] = field(default_factory=dict)  # temperature, max_tokens, seed, extra


@dataclass
class Reservoir:
    """A uniform sample of at most ``size`` values (latencies), so memory stays flat."""

    size: int = 10_000
    seen: int = 0
    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.seen += 1
        if len(self.values) < self.size:
            self.values.append(value)
        else:
            slot = random.randrange(self.seen)
            if slot < self.size:
                self.values[slot] = value


@dataclass
class Counters:
    """Figures of the run so far, for the summary and the statistics."""

    retries: dict[str, int] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)
    requests: int = 0
    latencies: Reservoir = field(default_factory=Reservoir)
    first_tokens: Reservoir = field(default_factory=Reservoir)  # --stream: time to the first
    estimated: int = 0  # answers without usage, whose tokens were estimated from the text
    by_model: dict[str, Usage] = field(default_factory=dict)  # with fallback models


#: The ID of the record the current task is for (each record has its own task).
RECORD_ID: ContextVar[object] = ContextVar("record_id", default=None)

#: A server's Retry-After is waited as given plus up to this share of it (at most
#: RETRY_AFTER_JITTER_MAX seconds), so that clients refused together do not all come back in
#: the same millisecond, and none comes back early.
RETRY_AFTER_JITTER = 0.05
RETRY_AFTER_JITTER_MAX = 0.25

#: A wait the server asks for beyond this many seconds is said on stderr (once a run).
LONG_WAIT = 60.0


#: Attempts of one call that may be given back (see :class:`GivenBack`): enough for the window
#: to halve from -j 1000 to 1, and still a bound, so that every record ends.
MOST_GIVEN_BACK = 10

#: While a rate group's store (Redis) cannot be reached, it is asked again after this long,
#: doubling up to GROUP_RETRY_MAX seconds.
GROUP_RETRY_FIRST = 0.1
GROUP_RETRY_MAX = 2.0
#: A request in a rate group that could go this many seconds ago, but could not ask, is
#: counted again before it goes.
LATE_IN_GROUP = 0.1


@dataclass
class GivenBack:
    """Attempts of one call that do not count against --max-retries: those that failed in a
    window of requests in flight that was cut since (their failure may be what cut it, or one
    of the round trip that did). At -j 200 against a server of 2 slots, the window needs a few
    round trips to shrink, and records that spent their retries meanwhile would become error
    records, or trip the circuit breaker. Judged at each decision, not at the failure: the
    failures of a round trip come before the cut they cause."""

    window: Window | None = None  # the window failures belong to, unless they name their own
    epochs: list[tuple[Window, int]] = field(default_factory=list)  # of the failed attempts

    def take(self, error: CallError) -> None:
        window = error.window if isinstance(error.window, Window) else self.window
        if error.window_epoch is not None and window is not None:
            self.epochs.append((window, error.window_epoch))

    @property
    def count(self) -> int:
        return min(MOST_GIVEN_BACK, sum(epoch != window.epoch for window, epoch in self.epochs))

    def counted(self, state: RetryCallState) -> int:
        """The attempts made so far that count."""
        return state.attempt_number - self.count


class ServerAwareWait:
    """How long a retry waits: a server's Retry-After as given, plus a little jitter; without
    one, exponential backoff: the n-th retry waits ``initial * 2**(n-1)`` (at most
    ``maximum``), drawn from the step's top quarter (``step * (1 - U/4)``), as the openai SDK
    does, so that clients that failed together spread out without waiting longer than the step.
    Attempts given back do not lengthen the steps.
    """

    def __init__(
        self, initial: float, maximum: float = 60.0, given_back: GivenBack | None = None
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self.given_back = given_back or GivenBack()

    def __call__(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, CallError) and error.retry_after:  # 0 says nothing: back off
            spread = min(RETRY_AFTER_JITTER * error.retry_after, RETRY_AFTER_JITTER_MAX)
            return error.retry_after + random.uniform(0, spread)
        retry = max(1, self.given_back.counted(state))
        step = min(self.maximum, self.initial * 2.0 ** (retry - 1))
        return step * (1 - random.random() / 4)


class Mapper:
    def __init__(
        self,
        client: Client,
        shape: RequestShape,
        template: Template,
        system: Template | None,
        interpreter: Interpreter,
        merger: Merger,
        *,
        max_retries: int = 3,
        retry_delay: float = 0.5,
        max_reasks: int = 2,
        accept_truncated: bool = False,
        response_formats: list[dict[str, Any] | None] | None = None,
        sleep: Sleep = asyncio.sleep,
        warn: Callable[[str], None] = lambda message: None,
        budgets: Budgets | None = None,
        concurrency: Concurrency | None = None,
        cost_cap: CostCap | None = None,
        price: Price | None = None,
        learn_limits: bool = True,
        stopping: asyncio.Event | None = None,
        cache: CacheUse | None = None,
        sharing: Sharing | None = None,
        router: Router | None = None,
        fallbacks: dict[str, Price | None] | None = None,
    ) -> None:
        # Where requests go: the router's lanes (--endpoint), else the one client given.
        self.router = router or Router(
            [Lane(client.endpoint, client, concurrency, budgets)], warn=lambda *args: None
        )
        self.client = client
        self.repeated: set[int] = set()  # (see repeats)
        self.cache = cache
        self.sharing = sharing
        self.shape = shape
        self.template = template
        self.system = system
        self.interpreter = interpreter
        self.merger = merger
        self.max_retries = max_retries
        self.retry_delay = retry_delay
        self.max_reasks = max_reasks
        # --accept-truncated (text answers only): an answer cut off at the token limit is a result
        self.accept_truncated = accept_truncated
        # The forms of response_format still to try, best first; None means "send none".
        self.response_formats = response_formats or [None]
        # The form the job asks for keys the cache, whichever one the server ends up taking.
        settings: dict[str, Any] = dict(shape.params)
        if self.response_formats[0] is not None:
            settings["response_format"] = self.response_formats[0]
        self.request_keys = (
            cache.keys(settings)
            if cache is not None
            else RequestKeys(shape.model, settings, interpreter.output_format)
        )
        self.sleep = sleep
        self.warn = warn
        self.counters = Counters()
        self.budgets = budgets
        self.concurrency = concurrency
        self.cost_cap = cost_cap
        self.price = price
        # --fallback-model: the models tried in turn for a record the primary cannot answer,
        # with their prices; the models the server said it does not know are not asked again.
        self.fallbacks = dict(fallbacks or {})
        self.prices: dict[str, Price | None] = {shape.model: price, **self.fallbacks}
        self.unknown_models: set[str] = set()
        self.router.models = tuple(self.prices)
        self.learn_limits = learn_limits
        # Set when the run stops (a signal, a cap): from then on nothing new is sent.
        self.stopping = stopping
        self.paused_until = 0.0
        self.warned_long_wait = False
        self.warned_no_usage = False
        self.group_down: float | None = None  # since when the rate group cannot be reached
        self.group_answered = False  # whether it ever did
        #: --stream: the answers being generated, by record ID, as they come (for --status).
        self.generating: dict[object, list[str]] | None = (
            {} if any(lane.client.endpoint.stream for lane in self.router.lanes) else None
        )
        # How the server counts prompt tokens: what rate budgets and --max-cost reserve.
        self.server_count = ServerCount()
        params = shape.params
        self.output_allowance = int(
            params.get("max_tokens")
            or params.get("max_completion_tokens")
            or DEFAULT_OUTPUT_ESTIMATE
        )

    def prepare(self, batch: list[Record]) -> list[Record | Work]:
        """Each record of a batch just read: its output at once, when the cache answers it,
        else the work that answers it. The batch is looked up in one query, and a record
        answered from the cache takes no task, slot or budget: a rerun runs at the speed of
        reading and writing."""
        cache = self.cache
        rendered: list[tuple[list[Message], bytes] | None] = []
        for record in batch:
            try:
                messages = messages_for(self.template, self.system, record)
            except MissingFields:
                rendered.append(None)  # process makes its error record
                continue
            rendered.append((messages, self._request_key(messages)))
        found = cache.answers([item[1] for item in rendered if item]) if cache else {}
        prepared: list[Record | Work] = []
        for record, item in zip(batch, rendered, strict=True):
            if item is None:
                prepared.append(functools.partial(self.process, record))
                continue
            messages, key = item
            replayed = found.get(key)
            if replayed is not None:
                try:
                    answered = self.accept(record, replayed)
                    if self.fallbacks:
                        answered[MODEL_KEY] = self.shape.model
                    prepared.append(answered)
                    continue
                except Unusable:
                    pass  # (re-asked as when it was first answered)
            ready = Prepared(messages, key, replayed)
            prepared.append(functools.partial(self.process, record, ready))
        return prepared

    def repeats(self, output: Record) -> bool:
        """Whether ``output`` is the failure of a request shared with one already counted
        (asked once for each output): one bad request repeated by many identical records is
        one failure to the circuit breaker, not a streak."""
        if id(output) in self.repeated:
            self.repeated.discard(id(output))
            return True
        return False

    def continuing(
        self, conversations: dict[str, list[Message]]
    ) -> Callable[[list[Record]], list[Record | Work]]:
        """A prepare step that sends each record named (by its ID) in ``conversations`` those
        messages, a conversation already begun (batch mode's lines re-asked online), and the
        others as :meth:`prepare` (with a cache) or :meth:`process` would."""

        def prepare(batch: list[Record]) -> list[Record | Work]:
            out: list[Record | Work] = []
            for record in batch:
                messages = conversations.get(canonical_id(record[ID_KEY]))
                if messages is not None:
                    ready = Prepared(messages, self._request_key(messages), None)
                    out.append(functools.partial(self.process, record, ready))
                elif self.cache is not None:
                    out.extend(self.prepare([record]))
                else:
                    out.append(functools.partial(self.process, record))
            return out

        return prepare

    async def process(
        self, record: Record, prepared: Prepared | None = None
    ) -> tuple[Record, bool]:
        """(the output record, whether it succeeded). Fatal errors propagate.

        With fallback models, a record the primary model cannot answer (see
        ``FALLBACK_ERRORS``) is asked of each in turn; its output names the model that
        answered under ``MODEL_KEY``."""
        primary = self.shape.model
        RECORD_ID.set(record.get(ID_KEY))  # (this record's task: its own context)
        if not self.fallbacks:
            return await self._process(record, prepared, primary)
        output: Record | None = None
        succeeded, attempts = False, 0
        for model in (primary, *self.fallbacks):
            if model in self.unknown_models:
                continue
            try:
                output, succeeded = await self._process(
                    record, prepared if model == primary else None, model, attempts
                )
            except (NotSent, CapReached) as stop:
                if output is None:
                    raise
                # The next model cannot be asked (the run stops, --max-cost has no room): the
                # model before was paid for, and its failure, with its answer, is the record's
                # output, not lost with the stop (a rerun retries it).
                if isinstance(stop, CapReached):
                    stop.output = (output, False)
                    raise
                break
            if succeeded:
                output[MODEL_KEY] = model
                break
            attempts = int(output.get("attempts") or attempts)
            if output.get("error_type") not in FALLBACK_ERRORS:
                break
        if output is None:
            raise Fatal(
                "not_found",
                ("no endpoint serves any" if self.router.several else "the server knows none")
                + " of the models: "
                + ", ".join((primary, *self.fallbacks)),
            )
        return output, succeeded

    async def _process(
        self, record: Record, prepared: Prepared | None, model: str, attempts: int = 0
    ) -> tuple[Record, bool]:
        """The record asked of ``model``: (the output record, whether it succeeded)."""
        hold: CostHold | None = None
        primary = model == self.shape.model
        price = self.prices.get(model)
        try:
            problem: Unusable | None = None
            # The record's question keys the cache, and its accepted answer is kept under it
            # (after re-asks too), so that a rerun pays for none of the requests again. A
            # fallback model's answers are not kept (the key is the primary model's), and are
            # shared only with identical requests to that model.
            key: bytes | None
            if not primary:
                messages = messages_for(self.template, self.system, record)
                key = self._request_key(messages) + b"\x00" + model.encode()
                replayed = None
            elif prepared is None:
                messages = messages_for(self.template, self.system, record)
                key = self._request_key(messages) if self.cache or self.sharing else None
                replayed = self.cache.answer(key) if self.cache and key else None
            else:
                messages, key, replayed = prepared.messages, prepared.key, prepared.replayed
                if replayed is None and self.cache and self.cache.kept_lately(key):
                    replayed = self.cache.answer(key)  # answered since its batch was read
            held = False
            paid = Usage()  # the record's answers paid for: the first and its re-asks

            async def send() -> tuple[Completion, int]:
                nonlocal hold, held
                if not held:  # a record answered from the cache, or shared, reserves nothing
                    hold, held = await self._hold_cost(messages, price), True
                return await self._call(messages, hold, model)

            for reask in range(self.max_reasks + 1):
                completion = replayed if reask == 0 else None
                shared = False
                if completion is None:
                    try:
                        completion, used, shared = await self._ask(
                            send, messages, key if reask == 0 else None, model
                        )
                    except (NotSent, CapReached):
                        if problem is None:
                            raise
                        # A re-ask that cannot go out (the run stops, the cap has no room
                        # left): the answer paid for is kept, as an error record; a rerun
                        # retries it.
                        raise problem from None
                    attempts += used
                    if not shared:
                        paid.add(completion.usage)  # (what a hit on it will say it saved)
                try:
                    merged = self.accept(record, completion)
                    if self.cache and key and primary and completion is not replayed and not shared:
                        self._keep(key, completion, paid)  # only answers accepted
                except Unusable as unusable:
                    unusable.answer = completion.content or completion.refusal
                    problem = unusable
                    if not problem.reask or reask == self.max_reasks:
                        raise
                    messages = [
                        *messages,
                        {"role": "assistant", "content": completion.content or ""},
                        {
                            "role": "user",
                            "content": reask_message(problem, self.interpreter.output_format),
                        },
                    ]
                    continue
                return merged, True
        except MissingFields as missing:
            message = missing_fields_message(missing.names, record)
            return self._failed(record, "missing_fields", message, attempts), False
        except Unusable as problem:
            return self._failed(
                record, problem.error_type, problem.message, attempts, problem.answer
            ), False
        except (RecordFailed, Retryable) as error:
            failed = self._failed(
                record, error.error_type, error.message, attempts + error.attempts
            )
            if getattr(error, "shared", False):
                self.repeated.add(id(failed))
            return failed, False
        except Fatal as error:
            if not self.fallbacks or error.error_type != "not_found":
                raise
            self._unknown_model(model, error)
            return self._failed(record, "unknown_model", error.message, attempts), False
        finally:
            if hold is not None and self.cost_cap is not None:
                self.cost_cap.settle(hold.reserved, hold.spent)
        raise AssertionError("unreachable")  # pragma: no cover

    def _unknown_model(self, model: str, error: Fatal) -> None:
        """The server does not know ``model`` (404): it is not asked again this run."""
        if model in self.unknown_models:
            return
        self.unknown_models.add(model)
        rest = [name for name in self.fallbacks if name not in self.unknown_models]
        if rest:
            unknown = "no endpoint serves" if self.router.several else "the server does not know"
            self.warn(f"{unknown} {model} ({error.message}); using {rest[0]}")

    def _keep(self, key: bytes, completion: Completion, paid: Usage) -> None:
        """Keep an accepted answer in the cache, with what the record paid for it. Never one
        cut off at the token limit (taken by --accept-truncated, which is not in the key). A
        cache that cannot be written (a full disk) must not cost the record its answer: it is
        said once, and nothing more is kept."""
        assert self.cache is not None
        if completion.finish_reason == "length":
            return
        try:
            self.cache.keep(key, completion, paid)
        except AgentsError as error:
            self.cache.mode = "read-only"
            self.warn(f"{error.message}; no more answers are kept in it this run")

    def accept(self, record: Record, completion: Completion) -> Record:
        """The output record of an answer; Unusable when it cannot be used."""
        result = self.interpreter.interpret(self._content(completion))
        return self.merger.merge(record, result)

    async def _ask(
        self,
        send: Callable[[], Awaitable[tuple[Completion, int]]],
        messages: list[Message],
        key: bytes | None,
        model: str | None = None,
    ) -> tuple[Completion, int, bool]:
        """The answer to a request: ``send()``'s, or that of an identical request in flight
        (then it made no attempts of its own); (the answer, the attempts, whether shared).
        A request to a fallback ``model`` is identical only to one to the same model."""
        if self.sharing is None:
            completion, used = await send()
            return completion, used, False
        asked = key or self._request_key(messages)
        if key is None and model is not None and model != self.shape.model:
            asked += b"\x00" + model.encode()
        (completion, used), shared = await self.sharing.once(asked, send)
        return completion, 0 if shared else used, shared

    def _request_key(self, messages: list[Message]) -> bytes:
        """The key of a request with these messages, as the job asks for it: the cache's,
        and what tells identical requests in flight apart."""
        return self.request_keys.key(messages)

    def _failed(
        self,
        record: Record,
        error_type: str,
        message: str,
        attempts: int,
        answer: str | None = None,
    ) -> Record:
        return error_record(record.get(ID_KEY), message, error_type, attempts, record, answer)

    def _content(self, completion: Completion) -> str:
        if completion.refusal:
            raise Unusable("refusal", f"the model refused: {completion.refusal}", reask=False)
        if completion.finish_reason == "length" and not (
            self.accept_truncated and completion.content
        ):
            raise Unusable(
                "truncated",
                "the answer was cut off at the token limit "
                "(finish_reason: length); raise --max-tokens",
                reask=False,
            )
        if completion.finish_reason == "content_filter":
            raise Unusable("refusal", "the answer was withheld by the content filter", reask=False)
        if not completion.content or not completion.content.strip():
            raise Unusable("empty_response", "the model returned no content", reask=False)
        return completion.content

    async def _call(
        self, messages: list[Message], hold: CostHold | None = None, model: str | None = None
    ) -> tuple[Completion, int]:
        """One completion with transport retries; (the completion, the attempts it took).

        The first attempt is made directly: most calls succeed, and building the retry machinery
        for each of them would cost more CPU than the call itself. A retryable failure hands the
        whole sequence to tenacity, whose first attempt is that failure: its attempt numbers,
        waits and stop condition are then the real ones.
        """
        try:
            return await self._request(messages, hold, model), 1
        except Retryable as error:
            first_failure = error
        given_back = GivenBack()
        # A fresh one for every call: an AsyncRetrying holds the state of the call it runs.
        retrying = AsyncRetrying(
            stop=lambda state: given_back.counted(state) >= self.max_retries + 1,
            wait=ServerAwareWait(self.retry_delay, given_back=given_back),
            retry=retry_if_exception_type(Retryable),
            sleep=self._backoff,
            before_sleep=self._count_retry,
            reraise=True,
        )
        attempts = 0
        try:
            async for attempt in retrying:
                attempts = attempt.retry_state.attempt_number
                with attempt:
                    try:
                        if attempts == 1:
                            raise first_failure
                        return await self._request(messages, hold, model), attempts
                    except CallError as error:
                        given_back.take(error)
                        raise
        except CallError as error:
            error.attempts = attempts
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _count_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        cause = error.error_type if isinstance(error, CallError) else "unknown"
        self.counters.retries[cause] = self.counters.retries.get(cause, 0) + 1
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        if wait > LONG_WAIT and not self.warned_long_wait:
            self.warned_long_wait = True  # once a run: a quota, not a passing limit
            from agents.map.progress import duration

            self.warn(
                f"the server asks to wait {duration(wait)} before a retry (Retry-After); "
                "waiting: Ctrl-C stops the run, and the same command run later resumes it"
            )
        if state.next_action is not None and LOGGER.isEnabledFor(logging.INFO):
            LOGGER.info(
                "retry %d after %s: %s; waiting %.2fs",
                state.attempt_number + 1,
                cause if isinstance(error, CallError) else "error",
                error,
                state.next_action.sleep,
            )

    def _estimate_usage(self, completion: Completion, prompt: int) -> None:
        """An answer without usage (a proxy that drops it, a streamed answer from a server that
        ignores stream_options): its tokens estimated from the text, four characters a token,
        so that the cost, --max-cost and --tpm still count it; said once."""
        text = (completion.content or "") + (completion.refusal or "")
        completion.usage = Usage(prompt=prompt, completion=math.ceil(len(text) / 4))
        self.counters.estimated += 1
        if not self.warned_no_usage:
            self.warned_no_usage = True
            self.warn(
                "the server's answers say nothing of the tokens they used: tokens and cost are "
                "estimated from the text (four characters a token)"
            )

    async def _streamed(self, client: Client, body: dict[str, Any]) -> Completion:
        """A streamed request whose answer, as it comes, is kept in :attr:`generating` under
        the record's ID until it is whole (for --status)."""
        assert self.generating is not None
        key = RECORD_ID.get()
        so_far: list[str] = []
        self.generating[key] = so_far
        token = SO_FAR.set(so_far)
        try:
            return await client.complete(body)
        finally:
            SO_FAR.reset(token)
            if self.generating.get(key) is so_far:
                del self.generating[key]

    async def _request(
        self, messages: list[Message], hold: CostHold | None = None, model: str | None = None
    ) -> Completion:
        """One request for ``messages`` (to ``model``, else the job's, by the name each
        endpoint gives it) through a lane the router picks."""
        primary = model is None or model == self.shape.model
        asked = self.shape.model if model is None else model
        for each in self.router.lanes:
            each.client.open()  # (before the slot and the budget: see Client.open)
        while True:
            form = self.response_formats[0]
            prompt = estimate_tokens(messages)
            # Asked when the budget is taken, by when earlier answers may have told more.
            cost = functools.partial(self._budgeted, messages, prompt)
            debug = LOGGER.isEnabledFor(logging.DEBUG)
            lane: Lane | None = None
            try:
                async with self._sending(cost, asked) as (taken, reserved):
                    lane = taken
                    body: dict[str, Any] = {
                        "model": (taken.model or self.shape.model) if primary else model,
                        "messages": messages,
                        **self.shape.params,
                    }
                    if form is not None:
                        body["response_format"] = form
                    self.counters.requests += 1
                    taken.figures.requests += 1
                    if debug:
                        LOGGER.debug("request to %s %s", taken.name, orjson.dumps(body).decode())
                    started = time.monotonic()
                    if self.generating is None:
                        completion = await taken.client.complete(body)
                    else:
                        completion = await self._streamed(taken.client, body)
            except RecordFailed as error:
                if lane is not None:
                    lane.figures.failed(error.error_type)
                if form is not None and _rejects_response_format(error):
                    self._drop_response_format(form)
                    continue
                LOGGER.info("request failed: %s: %s", error.error_type, error.message)
                raise
            except CallError as error:
                LOGGER.info("request failed: %s: %s", error.error_type, error.message)
                if lane is not None and self.router.failed(lane, error, asked):
                    continue  # that endpoint is out of use, and this request cost nothing
                raise
            assert lane is not None
            if not completion.usage_given:
                self._estimate_usage(completion, prompt)
            self.router.answered(lane)
            lane.figures.answered(time.monotonic() - started, completion.usage, asked)
            self._settle(lane, prompt, reserved, completion)
            price = self.prices.get(asked)
            if hold is not None and price is not None:
                hold.spent += price.cost(completion.usage)
            if self.fallbacks:
                self.counters.by_model.setdefault(asked, Usage()).add(completion.usage)
            self.counters.latencies.add(time.monotonic() - started)
            if completion.first_token is not None:
                self.counters.first_tokens.add(completion.first_token)
            self.counters.usage.add(completion.usage)
            if debug:
                usage = completion.usage
                LOGGER.debug(
                    "response finish_reason=%s usage=prompt:%d,completion:%d,cached:%d,"
                    "reasoning:%d content=%s",
                    completion.finish_reason,
                    usage.prompt,
                    usage.completion,
                    usage.cached,
                    usage.reasoning,
                    orjson.dumps(completion.content).decode(),
                )
            return completion

    def _budgeted(self, messages: list[Message], prompt: int) -> int:
        """The tokens a request reserves from a --tpm budget: its prompt as the server is
        expected to count it, and the answer's allowance (max_tokens, else a default)."""
        return self.server_count.budgeted(messages, prompt) + self.output_allowance

    async def _pause(self, lane: Lane) -> None:
        """Wait for a server's reset (a ``remaining: 0`` answer said when it comes)."""
        pause = lane.paused_until - time.monotonic()
        if pause > 0:
            await self._unless_stopped(asyncio.sleep(pause))

    async def _admit(self, cost: Callable[[], int], budgets: Budgets | None) -> int | None:
        """Wait for the rate budgets (one request at a time: see :mod:`agents.map.limits`);
        the tokens reserved (None: no budgets to wait for)."""
        if budgets is None or not budgets.active:
            return None
        await self._unless_stopped(budgets.turn.acquire())
        try:
            self._still_sending()  # a request that waited its turn past a stop reserves nothing
            tokens = cost()
            wait = await self._group_answer(budgets.reserve, tokens)
            due = time.monotonic() + wait
            try:
                while wait > 0:  # in a group, others that spent less may go first
                    await self._unless_stopped(asyncio.sleep(wait))
                    wait = await self._group_answer(budgets.still_to_wait)
                    now = time.monotonic()
                    if wait > 0:
                        due = now + wait
                    elif budgets.group is not None and now - due > LATE_IN_GROUP:
                        # The group could not be asked for a while (Redis down, a member that
                        # died holding it): the budget counted this request when it was due,
                        # long ago; sent now, with the others that waited, it would pass the
                        # limit in this window. So it is counted again, now.
                        wait = await self._group_answer(budgets.reserve, tokens)
                        due = now + wait
            except BaseException:
                budgets.withdraw()
                raise
        finally:
            budgets.turn.release()
        return tokens

    async def _group_answer(self, ask: Callable[..., float], *args: float) -> float:
        """``ask(*args)`` of the budgets, waiting while their group's store cannot be reached
        (Redis down or restarting): nothing is sent meanwhile, so the group's limit holds. Said
        once when it goes and once when it is back."""
        pause = GROUP_RETRY_FIRST
        while True:
            try:
                answer = ask(*args)
            except GroupBusy as busy:  # (others are changing it: in a moment)
                await self._unless_stopped(asyncio.sleep(busy.seconds))
                continue
            except GroupRefused as refused:  # (the password, TLS: waiting would not help)
                raise Fatal("rate_group", f"{refused.message}; {refused.hint}") from None
            except GroupUnavailable as error:
                if self.group_down is None:
                    self.group_down = time.monotonic()
                    self.warn(
                        f"--rate-group: {error.message}; no request is sent until it answers "
                        "(Ctrl-C stops the run, and the same command resumes it)"
                    )
                await self._unless_stopped(asyncio.sleep(pause))
                pause = min(GROUP_RETRY_MAX, pause * 2)
                continue
            if self.group_down is not None:
                from agents.map.progress import duration

                down = duration(time.monotonic() - self.group_down)
                self.group_down = None
                again = " again" if self.group_answered else ""
                self.warn(f"--rate-group: the group answers{again} (after {down}); going on")
            self.group_answered = True
            return answer

    async def _hold_cost(
        self, messages: list[Message], price: Price | None = None
    ) -> CostHold | None:
        """Under --max-cost, reserve the record's worst case before its first request: each
        request it may need (the first and every re-ask, whose prompt holds the answers before
        it), so that a re-ask never finds the budget taken by other records. Until the first
        answer tells how the server counts tokens, records go one at a time."""
        price = price or self.price
        if self.cost_cap is None or price is None:
            return None
        cap = self.cost_cap
        requests = 1 + (self.max_reasks if self.interpreter.can_reask else 0)

        def worst() -> float:
            prompt = self._prompt_worst_case(messages)
            return sum(
                price.cost(
                    Usage(
                        prompt=prompt + reask * (self.output_allowance + REASK_TOKENS),
                        completion=self.output_allowance,
                    )
                )
                for reask in range(requests)
            )

        reserved = await self._unless_stopped(
            cap.reserve(worst, alone=lambda: self.server_count.most is None)
        )
        return CostHold(reserved)

    def _prompt_worst_case(self, messages: list[Message]) -> int:
        """The prompt tokens --max-cost reserves: before any answer, a bound no tokenizer
        exceeds (a token per byte, plus the chat template's); then the estimate scaled by the
        most the server has counted per token estimated, which is far closer."""
        most = self.server_count.most
        if most is None:
            return prompt_token_bound(messages)
        return math.ceil(estimate_tokens(messages) * most)

    def _settle(
        self, lane: Lane, prompt: int, reserved: int | None, completion: Completion
    ) -> None:
        """After an answer: learn how the server counts, and correct the lane's budgets with
        what it says it used (``prompt``: the prompt's rule-of-thumb estimate; ``reserved``:
        the tokens the budgets took, if any). Limits in its headers are the lane's own."""
        usage = completion.usage
        self.server_count.observe(prompt, usage.prompt)
        actual = usage.prompt + usage.completion
        budgets = lane.budgets
        if budgets is not None and reserved is not None and actual:
            budgets.correct_tokens(reserved, actual)
        if self.learn_limits and completion.limits and budgets is not None:
            for name, per_minute in completion.limits.items():
                left, reset = completion.windows.get(name, (None, None))
                budgets.set_rate(name, per_minute, left, reset)
        if completion.windows and budgets is not None:
            for name, (left, reset) in completion.windows.items():
                budgets.sync(name, left, reset)
        if completion.pause:
            lane.paused_until = max(lane.paused_until, time.monotonic() + completion.pause)

    @contextlib.asynccontextmanager
    async def _sending(
        self, cost: Callable[[], int], model: str
    ) -> AsyncIterator[tuple[Lane, int | None]]:
        """A lane that may serve ``model`` and a concurrency slot in it, then its rate budget
        (``cost``: the tokens to reserve) and the job's (several endpoints: ``--rpm`` and
        ``--tpm`` are the job's total), then the last look at whether the run still sends;
        gives the lane and the tokens its budget reserved.

        The slot comes first: a request that took its budget and then waited for a slot would
        go out late, together with every other one that did, when answers free their slots at
        once; that burst is what a one-second window refuses. Taken in this order, the budget's
        spacing is the spacing on the wire.
        """
        router = self.router
        taken = router.try_take(model)  # (most requests find a slot: no await, no task)
        lane, slot = taken if taken is not None else await self._unless_stopped(router.take(model))
        signal: Signal | None = None  # not sent
        try:
            if lane.paused_until:  # (checked here: a coroutine call per request costs CPU)
                await self._pause(lane)
            reserved = await self._admit(cost, lane.budgets)
            if router.several:  # its budget's turn is free: a request waiting for a lane may go
                router.wake()
            if self.budgets is not None and self.budgets is not lane.budgets:
                await self._admit(cost, self.budgets)
            if reserved is not None and slot is not None and lane.concurrency is not None:
                slot = lane.concurrency.sent(slot)
            self._still_sending()
            yield lane, reserved
            signal = Signal.OK
        except CallError as error:
            budgeted = lane.budgets is not None and any(lane.budgets.rates.values())
            signal = signal_of(error, budgeted)
            if signal is not Signal.OK and slot is not None and lane.concurrency is not None:
                error.window_epoch = slot.epoch
                error.window = lane.concurrency.window
            raise
        finally:
            router.release(lane, slot, signal)

    async def _backoff(self, seconds: float) -> None:
        await self._unless_stopped(self.sleep(seconds))

    def _still_sending(self) -> None:
        if self.stopping is not None and self.stopping.is_set():
            raise NotSent

    async def _unless_stopped(self, step: Awaitable[T]) -> T:
        """``step`` (a wait for a slot, a budget, a backoff), or NotSent if the run stops first:
        a request that was waiting when Ctrl-C came must not go out during the grace period."""
        if self.stopping is None:
            return await step
        task = asyncio.ensure_future(step)
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not task.done():
                task.cancel()
            elif not task.cancelled():
                task.exception()  # retrieved (raised below), even when this wait was cancelled
        if task.done() and not task.cancelled():
            return task.result()  # it finished first (or with the stop): the caller checks again
        raise NotSent

    def _drop_response_format(self, form: dict[str, Any]) -> None:
        if self.response_formats and self.response_formats[0] is form:
            self.response_formats.pop(0)
            if self.response_formats[0] is None:
                self.warn(
                    "the server does not accept response_format; the schema is checked here instead"
                )


def _rejects_response_format(error: CallError) -> bool:
    text = error.message.lower()
    return error.http_status in (400, 422) and (
        "response_format" in text or "json_schema" in text or "schema" in text
    )


def response_formats(
    output_format: str, schema: dict[str, Any] | None
) -> list[dict[str, Any] | None]:
    """The response_format forms to try for structured output, best first."""
    if output_format != "structured" or schema is None:
        return [None]
    return [
        {"type": "json_schema", "json_schema": {"name": "result", "schema": schema}},
        {"type": "json_object", "schema": schema},  # llama-cpp-python's form
        None,
    ]


__all__ = ["Counters", "Mapper", "RequestShape", "response_formats"]
