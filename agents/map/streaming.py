"""--stream: an answer asked for as server-sent events (``"stream": true``) and put together
into the chat.completion body a whole answer would have been, which the client then reads as
it reads any (:mod:`agents.map.http`), so that results are still written one whole record at a
time.

Each event is a line ``data: {chat.completion.chunk}``; the text is the concatenation of the
chunks' ``delta.content`` (and ``delta.refusal``), the finish reason the last one given, the
usage the one the last chunk carries (``stream_options.include_usage``), and the stream ends
with ``data: [DONE]``. Comments (``:``), ``event:``/``id:`` lines and blank lines are passed
over.

``--idle-timeout SECONDS`` is the longest silence allowed between two lines (before the first
too: the prompt's processing), in addition to --timeout for the whole answer: a server that
stalls mid-answer is given up on and the record retried (``idle_timeout``), without waiting
for the total. A stream that ends before its finish reason or ``[DONE]`` was cut short
(``truncated_body``), and an ``error`` event is the server's error; both are retried.
"""

from __future__ import annotations

import asyncio
import time
from contextvars import ContextVar
from typing import Any, Protocol

import orjson

from agents.errors import Retryable

#: The text of the answer being streamed in this task, as it comes: a list the caller set
#: (agents.map.record, for --status to show the answers being generated), else None.
SO_FAR: ContextVar[list[str] | None] = ContextVar("so_far", default=None)


class Body(Protocol):
    """What aiohttp's response.content offers: whatever bytes came next, b"" at the end."""

    async def readany(self) -> bytes: ...


class _Lines:
    """The lines of a body, whatever their length (aiohttp's readline refuses long ones), each
    wait for more bytes at most ``idle`` seconds."""

    def __init__(self, body: Body, idle: float | None) -> None:
        self.body = body
        self.idle = idle
        self.buffer = b""
        self.ended = False

    async def next(self) -> bytes | None:
        """The next line, without its end; None once the body ended."""
        while b"\n" not in self.buffer:
            if self.ended:
                line, self.buffer = self.buffer, b""
                return line or None
            if self.idle is None:
                more = await self.body.readany()  # (--timeout, the whole answer's, still holds)
            else:
                # Only this wait's own expiry is the idle timeout: --timeout, which ends the
                # whole answer, may fire inside it too, and is a timeout as ever.
                waiting = asyncio.timeout(self.idle)
                try:
                    async with waiting:
                        more = await self.body.readany()
                except TimeoutError:
                    if not waiting.expired():
                        raise
                    raise Retryable(
                        "idle_timeout",
                        f"the answer stalled: nothing for {self.idle:g}s (--idle-timeout)",
                    ) from None
            self.ended = not more
            self.buffer += more
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line


async def assemble(body: Body, idle: float | None, sent: float) -> tuple[dict[str, Any], float]:
    """The chat.completion body the events of ``body`` make up, and the seconds from ``sent``
    (when the request left, on the monotonic clock) to the first event."""
    content = SO_FAR.get()
    if content is None:
        content = []
    refusal: list[str] = []
    finish: str | None = None
    usage: dict[str, Any] | None = None
    first: float | None = None
    lines = _Lines(body, idle)
    while True:
        line = await lines.next()
        if line is None:  # (the connection closed)
            if finish is not None:
                break  # (a server that does not send [DONE] after the last chunk)
            raise Retryable("truncated_body", "the streamed answer was cut short")
        line = line.strip()
        if not line.startswith(b"data:"):
            continue  # (a comment, an event name, the blank line between events)
        data = line[5:].strip()
        if first is None:
            first = time.monotonic() - sent
        if data == b"[DONE]":
            break
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise Retryable("invalid_response", "a streamed event is not JSON") from None
        if not isinstance(chunk, dict):
            continue
        if chunk.get("error"):
            raise Retryable("server_error", f"the stream ended in an error: {_detail(chunk)}")
        if isinstance(chunk.get("usage"), dict):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if isinstance(delta, dict):
                if isinstance(delta.get("content"), str):
                    content.append(delta["content"])
                if isinstance(delta.get("refusal"), str):
                    refusal.append(delta["refusal"])
            if isinstance(choice.get("finish_reason"), str):
                finish = choice["finish_reason"]
    if first is None or (finish is None and not content and not refusal):
        raise Retryable("invalid_response", "the streamed answer has no choices")
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(content) if content or not refusal else None,
    }
    if refusal:
        message["refusal"] = "".join(refusal)
    choice = {"index": 0, "message": message, "finish_reason": finish}
    return {"object": "chat.completion", "choices": [choice], "usage": usage}, first


def _detail(chunk: dict[str, Any]) -> str:
    error = chunk.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])[:500]
    return str(error)[:500]


__all__ = ["SO_FAR", "assemble"]
