"""The baseline: the fastest minimal client, one shared aiohttp session, orjson, a semaphore.

    python bench/bare_client.py URL JOBS [EXTRA_BODY_JSON] < records.jsonl > results.jsonl

It does the least a useful client must: read each record, send one chat request, write the
answer; nothing else (no retries, no templates, no error records).
"""

from __future__ import annotations

import asyncio
import sys

import aiohttp
import orjson


async def main(url: str, jobs: int, extra: dict[str, object]) -> None:
    semaphore = asyncio.Semaphore(jobs)
    out = sys.stdout.buffer
    connector = aiohttp.TCPConnector(limit=jobs)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(record: dict[str, object]) -> None:
            try:
                body = {
                    "model": "bench",
                    "messages": [{"role": "user", "content": record["word"]}],
                    **extra,
                }
                async with session.post(
                    url, data=orjson.dumps(body), headers={"Content-Type": "application/json"}
                ) as response:
                    answer = orjson.loads(await response.read())
                record["result"] = answer["choices"][0]["message"]["content"]
                out.write(orjson.dumps(record) + b"\n")
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

    uvloop.run(
        main(sys.argv[1], int(sys.argv[2]), orjson.loads(sys.argv[3]) if len(sys.argv) > 3 else {})
    )
