"""A scripted OpenAI-compatible server on 127.0.0.1 for fault and timing tests.

Each test gives a ``script``: a function of the request (its JSON body and its number) that
returns a :class:`Reply`. The server records every request, how many were in flight at most, and
how many times each prompt was asked.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass
class Reply:
    content: str | None = "ok"
    status: int = 200
    body: Any = None  # a whole JSON body (or bytes) instead of a completion around ``content``
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    finish_reason: str = "stop"
    refusal: str | None = None
    usage: dict[str, Any] | None = None
    action: str | None = None  # "drop": close the connection; "hang": never answer;
    # "truncate": promise more bytes than are sent
    # A request with "stream": true is answered as server-sent events (SSE mode): the content
    # in chunks of ``chunk`` characters, ``chunk_delay`` seconds apart; ``stall`` chunks in,
    # the stream goes silent until the server stops ("cut": the connection is closed instead).
    chunk: int = 3
    chunk_delay: float = 0.0
    stream_usage: bool = True  # False: a server that ignores stream_options.include_usage
    stall: int | None = None
    stall_action: str = "hang"


def last_user_message(request: dict[str, Any]) -> str:
    return next(m["content"] for m in reversed(request["messages"]) if m["role"] == "user")


def echo(request: dict[str, Any], number: int) -> Reply:
    return Reply(content=f"answer: {last_user_message(request)}")


Script = Callable[[dict[str, Any], int], Reply]


class FakeLLM:
    def __init__(
        self,
        script: Script = echo,
        on_answer: Callable[[dict[str, Any], float], None] | None = None,
        models: list[str] | None = None,
        port: int = 0,
    ) -> None:
        self.script = script
        self.models = models  # listed at GET /v1/models; None: no such route (404)
        self.model_lists = 0  # times GET /v1/models was asked
        self.on_answer = on_answer  # called with each request answered 200, and when it arrived
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.prompts: collections.Counter[str] = collections.Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.answered = 0  # whole 200 responses sent
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.port = port  # 0: a free one

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> FakeLLM:
        self.thread.start()
        assert self.started.wait(10), "the fake server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.closing.set)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.closing = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._handle)
        app.router.add_get("/v1/models", self._models)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        self.loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", self.port, backlog=1024, reuse_address=True)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.started.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())

    async def _models(self, http: web.Request) -> web.StreamResponse:
        with self.lock:
            self.model_lists += 1
        if self.models is None:
            raise web.HTTPNotFound()
        data = [{"id": name, "object": "model", "owned_by": "test"} for name in self.models]
        return web.json_response({"object": "list", "data": data})

    async def _handle(self, http: web.Request) -> web.StreamResponse:
        body = orjson.loads(await http.read())
        arrived = time.time()
        with self.lock:
            number = len(self.requests)
            self.requests.append(body)
            self.headers.append(dict(http.headers))
            self.prompts[last_user_message(body)] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        holding = True  # as a server's slot: freed when the answer is ready, before it is sent

        def free() -> None:
            nonlocal holding
            if holding:
                holding = False
                with self.lock:
                    self.in_flight -= 1

        try:
            reply = self.script(body, number)
            if reply.delay:
                await asyncio.sleep(reply.delay)
            if reply.action == "hang":
                await self.closing.wait()  # until the server stops
                return web.Response(status=503)
            # (Freed after sending, a client that sent its next request as soon as it read this
            # answer could find the slot still taken: refusals no real server would give.)
            free()
            if reply.action == "drop":
                if http.transport is not None:
                    http.transport.close()
                return web.Response(status=500)
            if body.get("stream") and reply.status == 200 and reply.body is None:
                return await self._stream(http, reply, body, arrived)
            payload = self._payload(reply, body)
            if reply.action == "truncate":
                response = web.StreamResponse(
                    status=200,
                    headers={
                        "Content-Type": "application/json",
                        "Content-Length": str(len(payload) + 50),
                    },
                )
                await response.prepare(http)
                await response.write(payload[: len(payload) // 2])
                assert http.transport is not None
                http.transport.close()
                return response
            response = web.Response(
                status=reply.status,
                body=payload,
                headers=reply.headers,
                content_type="application/json",
            )
            try:
                await response.prepare(http)
                await response.write_eof()
            except ConnectionResetError:  # the client is gone (killed): nothing was delivered
                return response
            if reply.status == 200:
                with self.lock:
                    self.answered += 1
                if self.on_answer is not None:
                    self.on_answer(body, arrived)
            return response
        finally:
            free()

    async def _stream(
        self, http: web.Request, reply: Reply, request: dict[str, Any], arrived: float
    ) -> web.StreamResponse:
        """The answer as OpenAI streams it: chat.completion.chunk events, the usage in a last
        chunk when stream_options.include_usage asks for it, then [DONE]."""
        response = web.StreamResponse(
            status=200, headers={"Content-Type": "text/event-stream", **reply.headers}
        )
        await response.prepare(http)

        def event(choices: list[dict[str, Any]], **more: Any) -> bytes:
            chunk = {"id": "chatcmpl-test", "object": "chat.completion.chunk",
                     "model": request.get("model"), "choices": choices, **more}  # fmt: skip
            return b"data: " + orjson.dumps(chunk) + b"\n\n"

        text = reply.content or ""
        pieces = [text[k : k + reply.chunk] for k in range(0, len(text), reply.chunk)] or [""]
        try:
            await response.write(event([{"index": 0, "delta": {"role": "assistant"}}]))
            for number, piece in enumerate(pieces):
                if reply.stall is not None and number == reply.stall:
                    if reply.stall_action == "cut":
                        assert http.transport is not None
                        http.transport.close()
                        return response
                    await self.closing.wait()
                    return response
                if reply.chunk_delay:
                    await asyncio.sleep(reply.chunk_delay)
                await response.write(event([{"index": 0, "delta": {"content": piece}}]))
            await response.write(
                event([{"index": 0, "delta": {}, "finish_reason": reply.finish_reason}])
            )
            if reply.stream_usage and (request.get("stream_options") or {}).get("include_usage"):
                usage = reply.usage or {"prompt_tokens": 10, "completion_tokens": 5,
                                        "total_tokens": 15}  # fmt: skip
                await response.write(event([], usage=usage))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except ConnectionResetError:
            return response
        with self.lock:
            self.answered += 1
        if self.on_answer is not None:
            self.on_answer(request, arrived)
        return response

    @staticmethod
    def _payload(reply: Reply, request: dict[str, Any]) -> bytes:
        if reply.body is not None:
            return reply.body if isinstance(reply.body, bytes) else orjson.dumps(reply.body)
        if reply.status >= 400:
            return orjson.dumps({"error": {"message": reply.content, "type": "test"}})
        message: dict[str, Any] = {"role": "assistant", "content": reply.content}
        if reply.refusal is not None:
            message["refusal"] = reply.refusal
        usage = reply.usage or {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        return orjson.dumps(
            {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "model": request.get("model"),
                "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason}],
                "usage": usage,
            }
        )


def token_cost(request: dict[str, Any]) -> int:
    """Tokens as agents-map estimates them: four characters a token and four a message, plus
    the answer's allowance."""
    prompt = sum(len(m["content"]) // 4 + 4 for m in request["messages"])
    return prompt + int(request.get("max_tokens") or 5)


class Limited:
    """A script that enforces ``requests`` and/or ``tokens`` per ``window`` seconds, as a
    provider does, refusing the excess with 429 and OpenAI's rate-limit headers; it records the
    most requests and tokens accepted in any window. ``count`` is how the server counts a
    request's tokens (by default as agents-map estimates them), and its usage reports it."""

    def __init__(
        self,
        requests: int | None = None,
        tokens: int | None = None,
        window: float = 1.0,
        headers: bool = True,
        count: Callable[[dict[str, Any]], int] = token_cost,
    ) -> None:
        self.count = count
        self.requests = requests
        self.tokens = tokens
        self.window = window
        self.headers = headers
        self.accepted: collections.deque[tuple[float, int]] = collections.deque()
        self.refused = 0
        self.answered = 0
        self.most_requests = 0
        self.most_tokens = 0
        self.lock = threading.Lock()

    def _limit_headers(self, now: float) -> dict[str, str]:
        if not self.headers:
            return {}
        per_minute = 60 / self.window
        reset = (self.accepted[0][0] + self.window - now) if self.accepted else 0.0
        out = {}
        if self.requests:
            out["x-ratelimit-limit-requests"] = str(int(self.requests * per_minute))
            out["x-ratelimit-remaining-requests"] = str(max(0, self.requests - len(self.accepted)))
            out["x-ratelimit-reset-requests"] = f"{max(reset, 0.0):.3f}s"
        if self.tokens:
            out["x-ratelimit-limit-tokens"] = str(int(self.tokens * per_minute))
        return out

    def __call__(self, request: dict[str, Any], number: int) -> Reply:
        import time

        cost = self.count(request)
        with self.lock:
            now = time.monotonic()
            while self.accepted and self.accepted[0][0] <= now - self.window:
                self.accepted.popleft()
            used = sum(tokens for _, tokens in self.accepted)
            over_requests = self.requests is not None and len(self.accepted) >= self.requests
            over_tokens = self.tokens is not None and used + cost > self.tokens
            if over_requests or over_tokens:
                self.refused += 1
                wait = (self.accepted[0][0] + self.window - now) if self.accepted else 0.1
                headers = {**self._limit_headers(now), "retry-after-ms": str(int(wait * 1000))}
                return Reply("rate limit reached", status=429, headers=headers)
            self.accepted.append((now, cost))
            self.answered += 1
            self.most_requests = max(self.most_requests, len(self.accepted))
            self.most_tokens = max(self.most_tokens, used + cost)
            headers = self._limit_headers(now)
        prompt = cost - int(request.get("max_tokens") or 5)
        return Reply(
            f"answer: {last_user_message(request)}",
            headers=headers,
            usage={
                "prompt_tokens": prompt,
                "completion_tokens": int(request.get("max_tokens") or 5),
            },
        )
