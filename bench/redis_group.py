"""The rate group kept in Redis beside the file group (issue 19): a server enforcing 100
requests in any one-second window (bench/limited_server.py, 50 ms latency), 4 agents-map
processes, -j 16 each, sharing --rpm 6000 through (a) --rate-group NAME (a file on this host)
and (b) --rate-group redis://127.0.0.1:PORT/NAME (a redis-server started here); then the cost
of one admission (Budgets.reserve under a limit that never makes it wait), CPU and wall time
per request, for both stores, in this process; and how many scripts Redis ran per request in (b),
where four members change the document at once (one when no other member changed it since the
member last saw it, one more for each time one had).

    python bench/redis_group.py [--seconds 30] [--admissions 20000]

Target: (b) ≥ 95 % of the limit with ≤ 1 % refused.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from rate_limits import LIMIT, free_port, scenario


def start_redis(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    server = subprocess.Popen(
        [shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(port),
         "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(0.5)
    return server, port


def admission_cost(group: object, count: int) -> tuple[float, float]:
    """Microseconds of CPU and of wall time per Budgets.reserve (and its still_to_wait)."""
    from agents.map.limits import Budgets

    budgets = Budgets(60_000_000, None, group)  # (a limit that never makes one wait)
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(count):
        if budgets.reserve(10) > 0:
            budgets.still_to_wait()
    return (
        (time.process_time() - cpu) / count * 1e6,
        (time.perf_counter() - wall) / count * 1e6,
    )


def scripts_run(port: int) -> int:
    """How many scripts the Redis at ``port`` ran (EVAL and EVALSHA), from INFO commandstats."""
    import redis

    stats = redis.Redis(port=port).info("commandstats")
    return sum(
        int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("eval", "evalsha")
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--admissions", type=int, default=20_000)
    args = parser.parse_args()
    total = int(LIMIT * 0.98 * args.seconds)
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        redis, port = start_redis(folder)
        try:
            print(
                "| scenario | processes | accepted | seconds | requests/s | of the limit | "
                "refused | most in any 1 s | first ÷ last to finish | exit |\n"
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
                flush=True,
            )
            rows = {}
            for label, group in (
                ("(a) 4 processes, --rate-group NAME (file)", "bench"),
                ("(b) 4 processes, --rate-group redis", f"redis://127.0.0.1:{port}/bench"),
            ):
                flags = ["--rpm", "6000", "--rate-group", group]
                rows[label] = scenario(label, 4, flags, False, total, folder)
                print(rows[label], flush=True)
            accepted = int(rows[label].split("|")[3].replace(",", ""))
            print(f"\nscripts run by Redis in (b): {scripts_run(port):,}, "
                  f"{scripts_run(port) / accepted:.2f} per request accepted")  # fmt: skip
            os.environ["AGENTS_RUNTIME_DIR"] = str(folder / "runtime")
            from agents.map.limits import FileGroup, group_file
            from agents.map.redis_group import RedisGroup

            (folder / "runtime").mkdir(exist_ok=True)
            print("\n| store | CPU µs per admission | wall µs per admission |\n|---|---:|---:|")
            for label, store in (
                ("file (flock + JSON)", FileGroup(group_file("cost"))),
                (
                    "Redis (one script, no other member)",
                    RedisGroup(f"redis://127.0.0.1:{port}/cost"),
                ),
            ):
                cpu, wall = admission_cost(store, args.admissions)
                print(f"| {label} | {cpu:.0f} | {wall:.0f} |", flush=True)
        finally:
            redis.terminate()
            redis.wait()


if __name__ == "__main__":
    main()
