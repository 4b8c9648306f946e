"""Rate limits at full speed: a server enforcing 6,000 RPM (100 requests in any one-second
window) with 50 ms latency, for about 30 seconds of traffic each:

    (a) one agents-map with --rpm 6000 (the limit itself), (b) one learning the limit from
    headers, (c) 4 agents-map processes in one --rate-group sharing --rpm 6000, -j 16 each,
    (d) 2 processes in one group, -j 4 and -j 60: each has half the records, so a fair share
    finishes them together (first ÷ last to finish near 1).

    python bench/rate_limits.py [--seconds 30]

Reports requests/s achieved while traffic flowed, as a share of the limit, and the share of
requests refused with 429. Target: ≥ 95 % of the limit with ≤ 1 % refused, in all three.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
LIMIT = 100  # requests per second


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def records(path: Path, count: int, prefix: str) -> Path:
    with path.open("wb") as out:
        for number in range(count):
            out.write(orjson.dumps({"_id": f"{prefix}{number}", "word": f"w{number}"}) + b"\n")
    return path


def scenario(
    name: str,
    processes: int,
    flags: list[str],
    headers: bool,
    total: int,
    folder: Path,
    jobs: list[int] | None = None,
) -> str:
    jobs = jobs or [64 // processes] * processes
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "limited_server.py"),
            str(port),
            str(LIMIT),
            "0.05",
            *(["--headers"] if headers else []),
        ],
        stdout=subprocess.PIPE,
    )
    assert server.stdout is not None and server.stdout.readline().strip() == b"ready"
    env = {**os.environ, "AGENTS_RUNTIME_DIR": str(folder / "runtime")}
    try:
        clients = []
        began = time.monotonic()
        for k in range(processes):
            source = records(folder / f"{name}{k}.jsonl", total // processes, f"{k}-")
            clients.append(
                subprocess.Popen(
                    [
                        str(BIN / "agents-map"),
                        "--base-url",
                        f"http://127.0.0.1:{port}/v1",
                        "--prompt",
                        "{word}",
                        "-q",
                        "-j",
                        str(jobs[k]),
                        "--max-retries",
                        "10",
                        *flags,
                    ],
                    stdin=source.open("rb"),
                    stdout=subprocess.DEVNULL,
                    env=env,
                )
            )
        # each process's time to finish its equal share: a fair group finishes them together
        finished: dict[int, float] = {}
        while len(finished) < len(clients):
            for k, client in enumerate(clients):
                if k not in finished and client.poll() is not None:
                    finished[k] = time.monotonic() - began
            time.sleep(0.01)
        statuses = [client.returncode for client in clients]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats") as reply:
            stats = orjson.loads(reply.read())
    finally:
        server.terminate()
        server.wait()
    rate = stats["accepted"] / max(stats["active_seconds"], 1e-9)
    refused = stats["refused"] / max(stats["accepted"] + stats["refused"], 1)
    return (
        f"| {name} | {processes} | {stats['accepted']:,} | {stats['active_seconds']:.1f} | "
        f"{rate:.1f} | {rate / LIMIT:.1%} | {stats['refused']} ({refused:.2%}) | "
        f"{stats['most_in_a_second']} | {min(finished.values()) / max(finished.values()):.2f} | "
        f"{' '.join(map(str, statuses))} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    total = int(LIMIT * 0.98 * args.seconds)
    print(
        "| scenario | processes | accepted | seconds | requests/s | of the limit | refused |"
        " most in any 1 s | first ÷ last to finish | exit |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as folder:
        print(
            scenario("(a) --rpm 6000", 1, ["--rpm", "6000"], False, total, Path(folder)), flush=True
        )
        print(scenario("(b) learned from headers", 1, [], True, total, Path(folder)), flush=True)
        print(
            scenario(
                "(c) 4 processes, one --rate-group, -j 16 each",
                4,
                ["--rpm", "6000", "--rate-group", "bench"],
                False,
                total,
                Path(folder),
            ),
            flush=True,
        )
        print(
            scenario(
                "(d) 2 processes, one --rate-group, -j 4 and -j 60",
                2,
                ["--rpm", "6000", "--rate-group", "unequal"],
                False,
                total,
                Path(folder),
                jobs=[4, 60],
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
