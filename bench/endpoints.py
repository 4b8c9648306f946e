"""Several endpoints at full speed: three fake servers, each enforcing 100 requests in any
one-second window (bench/limited_server.py, 50 ms latency), one agents-map over all three with
--endpoint 'URL rpm=6000' and -j 64:

    (a) all three up for the whole run: the job's rate while traffic flowed (the servers'
        first to last request, as bench/rate_limits.py measures) as a share of the 300/s total;
    (b) the third killed halfway: the rate of the two survivors after the kill, as a share of
        the 200/s they allow, and the job's wall time beside the ideal one.

    python bench/endpoints.py [--seconds 30]

Target (issue 18): ≥ 95 % of what the live endpoints allow, with ≤ 1 % of requests refused.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson
from rate_limits import BIN, HERE, LIMIT, free_port, records


def start_server(port: int) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        [sys.executable, str(HERE / "limited_server.py"), str(port), str(LIMIT), "0.05"],
        stdout=subprocess.PIPE,
    )
    assert server.stdout is not None and server.stdout.readline().strip() == b"ready"
    return server


def server_stats(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats") as reply:
        return dict(orjson.loads(reply.read()))


def scenario(name: str, seconds: float, kill_at: float | None, folder: Path) -> str:
    ports = [free_port() for _ in range(3)]
    servers = [start_server(port) for port in ports]
    if kill_at is None:
        total = int(3 * LIMIT * 0.97 * seconds)
    else:  # three at first, two after the kill
        total = int(LIMIT * 0.97 * (3 * seconds * kill_at + 2 * seconds * (1 - kill_at)))
    source = records(folder / f"{name[:3]}.jsonl", total, "r")
    env = {**os.environ, "AGENTS_RUNTIME_DIR": str(folder / "runtime")}
    endpoints = [
        arg for port in ports for arg in ("--endpoint", f"http://127.0.0.1:{port}/v1 rpm=6000")
    ]
    stats_file = folder / f"{name[:3]}-stats.json"
    killed: dict[str, float] = {}
    try:
        began = time.monotonic()
        client = subprocess.Popen(
            [str(BIN / "agents-map"), "--prompt", "{word}", "-q", "-j", "64", "--max-retries",
             "10", "--stats", str(stats_file), *endpoints],
            stdin=source.open("rb"),
            stdout=subprocess.DEVNULL,
            env=env,
        )  # fmt: skip
        answered_before_kill = [0.0, 0.0]
        while client.poll() is None:
            elapsed = time.monotonic() - began
            if kill_at is not None and not killed and elapsed >= seconds * kill_at:
                answered_before_kill = [server_stats(port)["accepted"] for port in ports[:2]]
                servers[2].kill()
                servers[2].wait()
                killed["at"] = time.monotonic()
            time.sleep(0.01)
        wall = time.monotonic() - began
        after = [server_stats(port) for port in ports[:2]]
        every = after + ([server_stats(ports[2])] if not killed else [])
    finally:
        for server in servers:
            if server.poll() is None:
                server.terminate()
                server.wait()
    stats = orjson.loads(stats_file.read_bytes())
    accepted = sum(item["accepted"] for item in every)
    refused = sum(item["refused"] for item in every)
    share_refused = refused / max(accepted + refused, 1)
    if killed:
        survivors = sum(after[k]["accepted"] - answered_before_kill[k] for k in range(2))
        span = wall - (killed["at"] - began)
        rate = survivors / span
        allowed = 2 * LIMIT
    else:  # while traffic flowed (the servers' first to last request), as bench/rate_limits.py
        rate = accepted / max(item["active_seconds"] for item in every)
        allowed = 3 * LIMIT
    return (
        f"| {name} | {stats['succeeded']:,} / {total:,} | {wall:.1f} | {rate:.1f} | "
        f"{rate / allowed:.1%} of {allowed}/s | {refused} ({share_refused:.2%}) | "
        f"{' '.join(str(entry['requests']) for entry in stats['endpoints'])} | "
        f"{client.returncode} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    print(
        "| scenario | succeeded | wall s | requests/s | of what the live endpoints allow |"
        " refused (429) | requests per endpoint | exit |\n"
        "|---|---:|---:|---:|---:|---:|---|---|",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as folder:
        print(scenario("(a) three endpoints", args.seconds, None, Path(folder)), flush=True)
        print(scenario("(b) the third killed halfway", args.seconds, 0.5, Path(folder)), flush=True)


if __name__ == "__main__":
    main()
