"""A fake OpenAI-compatible server that enforces a rate limit, for the rate-limit benchmark.

    python bench/limited_server.py PORT PER_SECOND LATENCY [--headers]

At most PER_SECOND requests are accepted in any sliding one-second window (stricter than a
per-minute window at the same rate); the excess gets 429 with Retry-After. With --headers every
answer carries OpenAI's x-ratelimit-* headers (the limit per minute, what is left of the
window, when it resets). GET /stats returns the counts as JSON.
"""

from __future__ import annotations

import asyncio
import collections
import sys
import time

import orjson

BODY = orjson.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "bonjour"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    }
)


class Limit:
    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self.times: collections.deque[float] = collections.deque()
        self.accepted = 0
        self.refused = 0
        self.most = 0
        self.first = 0.0
        self.last = 0.0

    def admit(self) -> tuple[bool, int, float]:
        now = time.monotonic()
        while self.times and self.times[0] <= now - 1.0:
            self.times.popleft()
        if len(self.times) >= self.per_second:
            self.refused += 1
            return False, 0, self.times[0] + 1.0 - now
        self.times.append(now)
        self.accepted += 1
        self.first = self.first or now
        self.last = now
        self.most = max(self.most, len(self.times))
        return True, self.per_second - len(self.times), self.times[0] + 1.0 - now


class Handler(asyncio.Protocol):
    def __init__(self, limit: Limit, latency: float, headers: bool) -> None:
        self.limit = limit
        self.latency = latency
        self.headers = headers
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:end].lower()
            length = 0
            if (start := head.find(b"content-length:")) >= 0:
                stop = head.find(b"\r\n", start)
                length = int(head[start + 15 : stop if stop > 0 else None])
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            if head.startswith(b"get /stats"):
                self._send(
                    200,
                    orjson.dumps(
                        {
                            "accepted": self.limit.accepted,
                            "refused": self.limit.refused,
                            "most_in_a_second": self.limit.most,
                            "active_seconds": self.limit.last - self.limit.first,
                        }
                    ),
                    {},
                )
                continue
            ok, left, reset = self.limit.admit()
            extra = {}
            if self.headers:
                extra = {
                    "x-ratelimit-limit-requests": str(self.limit.per_second * 60),
                    "x-ratelimit-remaining-requests": str(left),
                    "x-ratelimit-reset-requests": f"{max(reset, 0):.3f}s",
                }
            if not ok:
                extra["retry-after-ms"] = str(max(1, int(reset * 1000)))
                body = b'{"error": {"message": "rate limit reached"}}'
                asyncio.get_running_loop().call_later(self.latency, self._send, 429, body, extra)
            else:
                asyncio.get_running_loop().call_later(self.latency, self._send, 200, BODY, extra)

    def _send(self, status: int, body: bytes, extra: dict[str, str]) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        reason = b"OK" if status == 200 else b"Too Many Requests"
        head = [
            b"HTTP/1.1 %d %s" % (status, reason),
            b"Content-Type: application/json",
            b"Content-Length: %d" % len(body),
            b"Connection: keep-alive",
        ]
        head += [f"{name}: {value}".encode() for name, value in extra.items()]
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)


async def serve(port: int, per_second: int, latency: float, headers: bool) -> None:
    limit = Limit(per_second)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Handler(limit, latency, headers), "127.0.0.1", port, backlog=4096
    )
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    import uvloop

    uvloop.run(
        serve(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), "--headers" in sys.argv)
    )
