"""An OpenAI-compatible server whose faults do not depend on load, for bench/faults.py.

    python bench/faulty_server.py PORT STATS_FILE [--seed N] [--latency S]

Each attempt, independently: 5 % get a 429 with ``Retry-After: 1``, 5 % a 500, 2 % a dropped
connection, the rest an answer after ``--latency`` seconds. Every retry of a prompt that arrives
before the Retry-After it was given has run out is counted as early. On SIGTERM the counts go
to STATS_FILE as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import time

import orjson
from aiohttp import web

RATE_LIMITED, SERVER_ERROR, DROPPED = 0.05, 0.05, 0.02
RETRY_AFTER = 1.0


def answer(prompt: str) -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "model": "bench",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": f"answer {prompt}"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
        }
    )


class Faults:
    def __init__(self, seed: int, latency: float) -> None:
        self.random = random.Random(seed)
        self.latency = latency
        self.not_before: dict[str, float] = {}  # prompt -> when its Retry-After runs out
        self.counts = {"requests": 0, "ok": 0, "429": 0, "500": 0, "dropped": 0, "early": 0}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        prompt = body["messages"][-1]["content"]
        now = time.monotonic()
        self.counts["requests"] += 1
        # 5 ms of tolerance: a timer may fire a millisecond early, which no server would count
        if now < self.not_before.get(prompt, 0.0) - 0.005:
            self.counts["early"] += 1
        draw = self.random.random()
        if draw < RATE_LIMITED:
            self.counts["429"] += 1
            self.not_before[prompt] = now + RETRY_AFTER
            return web.json_response(
                {"error": {"message": "Rate limit reached", "type": "requests"}},
                status=429,
                headers={"Retry-After": f"{RETRY_AFTER:g}"},
            )
        if draw < RATE_LIMITED + SERVER_ERROR:
            self.counts["500"] += 1
            return web.json_response({"error": {"message": "internal error"}}, status=500)
        if draw < RATE_LIMITED + SERVER_ERROR + DROPPED:
            self.counts["dropped"] += 1
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=500)
        if self.latency:
            await asyncio.sleep(self.latency)
        self.counts["ok"] += 1
        return web.Response(body=answer(prompt), content_type="application/json")


async def serve(port: int, stats: str, seed: int, latency: float) -> None:
    faults = Faults(seed, latency)
    app = web.Application()
    app.router.add_post("/v1/chat/completions", faults.handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=4096)
    await site.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    with open(stats, "wb") as out:
        out.write(orjson.dumps(faults.counts))
    await runner.cleanup()


if __name__ == "__main__":
    import uvloop

    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("stats")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--latency", type=float, default=0.0)
    arguments = parser.parse_args()
    uvloop.run(serve(arguments.port, arguments.stats, arguments.seed, arguments.latency))
