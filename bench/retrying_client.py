"""The minimal client that survives faults, as bench/faults.py's baseline.

    python bench/retrying_client.py URL JOBS < records.jsonl > results.jsonl

One aiohttp session, a fixed number of requests in flight, and retries (at most 6) of 429s,
5xx and dropped connections: a server's Retry-After is waited exactly; otherwise 0.5 s doubling,
the openai SDK's first step. No jitter, no adaptive concurrency, no error records.
"""

from __future__ import annotations

import asyncio
import sys

import aiohttp
import orjson

RETRIES = 6


async def main(url: str, jobs: int) -> None:
    semaphore = asyncio.Semaphore(jobs)
    out = sys.stdout.buffer
    connector = aiohttp.TCPConnector(limit=jobs)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(record: dict[str, object]) -> None:
            body = orjson.dumps(
                {"model": "bench", "messages": [{"role": "user", "content": record["word"]}]}
            )
            try:
                for attempt in range(RETRIES + 1):
                    wait = 0.5 * 2**attempt
                    try:
                        async with session.post(
                            url, data=body, headers={"Content-Type": "application/json"}
                        ) as response:
                            raw = await response.read()
                            if response.status == 200:
                                answer = orjson.loads(raw)
                                record["result"] = answer["choices"][0]["message"]["content"]
                                out.write(orjson.dumps(record) + b"\n")
                                return
                            if "Retry-After" in response.headers:
                                wait = float(response.headers["Retry-After"])
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(wait)
            finally:
                semaphore.release()

        tasks = set()
        for line in sys.stdin.buffer:
            await semaphore.acquire()
            task = asyncio.create_task(one(orjson.loads(line)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
    out.flush()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(sys.argv[1], int(sys.argv[2])))
