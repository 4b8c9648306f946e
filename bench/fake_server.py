"""A minimal OpenAI-compatible HTTP/1.1 server for benchmarks: fixed answer, optional latency.

    python bench/fake_server.py PORT [LATENCY_SECONDS]

A request with "stream": true is answered as server-sent events: the role at once, then the
same answer in chunks, its finish reason, the usage and [DONE] after the latency.

Written on raw asyncio (with uvloop) so that the server, not the client under test, is never the
bottleneck: it parses only what it must (headers, Content-Length) and keeps connections alive.
"""

from __future__ import annotations

import asyncio
import sys

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
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(BODY)).encode()
    + b"\r\nConnection: keep-alive\r\n\r\n"
    + BODY
)


def _event(choices: list[object], **more: object) -> bytes:
    chunk = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "model": "bench"}
    return b"data: " + orjson.dumps({**chunk, "choices": choices, **more}) + b"\n\n"


FIRST_EVENT = _event([{"index": 0, "delta": {"role": "assistant"}}])
LATER_EVENTS = (
    _event([{"index": 0, "delta": {"content": "bon"}}])
    + _event([{"index": 0, "delta": {"content": "jour"}}])
    + _event([{"index": 0, "delta": {}, "finish_reason": "stop"}])
    + _event([], usage={"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15})
    + b"data: [DONE]\n\n"
)
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: "
    + str(len(FIRST_EVENT) + len(LATER_EVENTS)).encode()
    + b"\r\nConnection: keep-alive\r\n\r\n"
    + FIRST_EVENT
)


class Handler(asyncio.Protocol):
    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            start = head.find(b"content-length:")
            length = (
                int(
                    head[
                        start + 15 : head.find(b"\r\n", start)
                        if head.find(b"\r\n", start) > 0
                        else None
                    ]
                )
                if start >= 0
                else 0
            )
            if len(self.buffer) < end + 4 + length:
                return
            streamed = b'"stream":true' in self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            if streamed:
                self._write(STREAM_HEAD)
            answer = LATER_EVENTS if streamed else RESPONSE
            if self.latency:
                asyncio.get_running_loop().call_later(self.latency, self._write, answer)
            else:
                self._write(answer)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


async def serve(port: int, latency: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Handler(latency), "127.0.0.1", port, backlog=4096)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    import uvloop

    uvloop.run(serve(int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 0.0))
