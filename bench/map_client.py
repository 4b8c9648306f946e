"""agents-map beside the fastest minimal client, against a local fake server, in one run.

    python bench/map_client.py                 # all three measurements
    python bench/map_client.py --quick         # smaller inputs, for a look

1. client overhead: 20,000 records at -j 64 against a zero-latency server: CPU seconds per
   record of each client (target: ours at most 1.5 times the bare client's);
2. latency-bound: 5,000 records at -j 200 against a 200 ms server: records/s (target: ≥ 95 %
   of the bare client's);
3. memory: 10 k, 100 k and 1 M records at -j 64: peak RSS (target: flat, the 1 M figure within
   20 MB of the 10 k figure).

Each client is a separate process timed from launch to exit, with CPU and peak RSS from its
rusage; the server runs in its own process (bench/fake_server.py), so it is not counted.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
BIN = Path(sys.executable).parent


@dataclass
class Measure:
    name: str
    records: int
    wall: float
    cpu: float
    rss_mb: float

    @property
    def rate(self) -> float:
        return self.records / self.wall


def records_file(count: int) -> Path:
    path = DATA / f"words_{count}.jsonl"
    if not path.exists():
        DATA.mkdir(exist_ok=True)
        with path.open("wb") as out:
            for number in range(1, count + 1):
                out.write(orjson.dumps({"_id": number, "word": f"word{number}"}) + b"\n")
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    def __init__(self, latency: float) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "fake_server.py"), str(self.port), str(latency)],
            stdout=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == b"ready"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()


def measure(name: str, command: list[str], source: Path, records: int) -> Measure:
    with source.open("rb") as stdin, open(os.devnull, "wb") as sink:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdin=stdin, stdout=sink)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{name} failed: {' '.join(command)}")
    return Measure(name, records, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


def ours(server: Server, jobs: int) -> list[str]:
    return [
        str(BIN / "agents-map"),
        "--base-url",
        server.url,
        "-m",  # the model the bare client names: no GET /models before the first request
        "bench",
        "--prompt",
        "{word}",
        "-j",
        str(jobs),
    ]


def bare(server: Server, jobs: int) -> list[str]:
    return [
        sys.executable,
        str(HERE / "bare_client.py"),
        server.url + "/chat/completions",
        str(jobs),
    ]


def row(m: Measure) -> str:
    return (
        f"| {m.name} | {m.records:,} | {m.wall:.2f} | {m.cpu:.2f} | "
        f"{m.cpu / m.records * 1e6:.0f} | {m.rate:,.0f} | {m.rss_mb:.1f} |"
    )


HEADER = (
    "| client | records | wall s | CPU s | CPU µs/record | records/s | peak RSS MB |\n"
    "|---|---:|---:|---:|---:|---:|---:|"
)


def overhead(count: int) -> list[str]:
    server = Server(0.0)
    try:
        source = records_file(count)
        runs = [
            (
                measure("bare aiohttp", bare(server, 64), source, count),
                measure("agents-map", ours(server, 64), source, count),
            )
            for _ in range(3)
        ]
    finally:
        server.stop()
    runs.sort(key=lambda pair: pair[1].cpu / pair[0].cpu)
    base, mine = runs[1]  # the median ratio of three paired runs
    ratio = (mine.cpu / mine.records) / (base.cpu / base.records)
    return [
        f"### Client overhead: {count:,} records, -j 64, zero latency (median of 3 pairs)",
        "",
        f"`{' '.join(ours(server, 64)[1:])}` beside `bare_client.py URL 64`",
        "",
        HEADER,
        row(base),
        row(mine),
        "",
        f"CPU per record, agents-map ÷ bare client: **{ratio:.2f}** (target ≤ 1.5)",
        "",
    ]


def latency(count: int) -> list[str]:
    server = Server(0.2)
    try:
        source = records_file(count)
        base = measure("bare aiohttp", bare(server, 200), source, count)
        mine = measure("agents-map", ours(server, 200), source, count)
    finally:
        server.stop()
    return [
        f"### Latency-bound: {count:,} records, -j 200, 200 ms per request (ideal 1,000 records/s)",
        "",
        HEADER,
        row(base),
        row(mine),
        "",
        f"records/s, agents-map ÷ bare client: **{mine.rate / base.rate:.1%}** (target ≥ 95 %)",
        "",
    ]


def memory(sizes: list[int]) -> list[str]:
    server = Server(0.0)
    try:
        results = [
            measure("agents-map", ours(server, 64), records_file(size), size) for size in sizes
        ]
    finally:
        server.stop()
    growth = results[-1].rss_mb - results[0].rss_mb
    return [
        f"### Memory: -j 64, zero latency, {', '.join(f'{s:,}' for s in sizes)} records",
        "",
        HEADER,
        *map(row, results),
        "",
        f"peak RSS growth from {sizes[0]:,} to {sizes[-1]:,} records: **{growth:+.1f} MB** "
        "(target: within 20 MB)",
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller inputs")
    parser.add_argument("--only", choices=["overhead", "latency", "memory"])
    args = parser.parse_args()
    lines: list[str] = []
    if args.only in (None, "overhead"):
        lines += overhead(5_000 if args.quick else 20_000)
    if args.only in (None, "latency"):
        lines += latency(1_000 if args.quick else 5_000)
    if args.only in (None, "memory"):
        lines += memory([10_000, 30_000] if args.quick else [10_000, 100_000, 1_000_000])
    print("\n".join(lines))


if __name__ == "__main__":
    main()
