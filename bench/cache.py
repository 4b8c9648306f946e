"""The response cache against the zero-latency fake server, -j 64, side by side in one run:

    (1) no cache, (2) --cache on an empty file (every record a miss, its answer kept),
    (3) the same command again (every record a hit, no request), (4) that again once every
    answer's last use is more than an hour old (each hit then rewrites its last use).

    python bench/cache.py [--records 100000]

Targets (issue 16): the fully cached rerun at least 10 x the uncached rate, with flat RSS; CPU
per record with --cache on misses at most 1.2 x without.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
from pathlib import Path

from map_client import BIN, Measure, Server, measure, records_file


def command(server: Server, cache: Path | None) -> list[str]:
    return [
        str(BIN / "agents-map"),
        *("--base-url", server.url, "-m", "bench", "--prompt", "{word}", "-j", "64", "-q"),
        *(["--cache", str(cache)] if cache is not None else []),
    ]


def median_of(runs: list[Measure]) -> Measure:
    """The run of median wall time (this machine's speed swings by a third between runs)."""
    return sorted(runs, key=lambda run: run.wall)[len(runs) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the three runs")
    options = parser.parse_args()
    count = options.records
    source = records_file(count)
    os.environ.setdefault("OPENAI_API_KEY", "bench")
    server = Server(0.0)
    rounds: list[tuple[Measure, Measure, Measure, Measure]] = []
    try:
        for _ in range(options.rounds):  # side by side, interleaved: noise hits all three
            with tempfile.TemporaryDirectory() as folder:
                cache = Path(folder) / "responses.sqlite"
                bare = measure("no cache", command(server, None), source, count)
                misses = measure("--cache, all misses", command(server, cache), source, count)
                hits = measure("--cache, all hits", command(server, cache), source, count)
                with sqlite3.connect(cache) as db:
                    db.execute("UPDATE answers SET used = used - 7200")
                db.close()
                late = measure("--cache, hits 2 h on", command(server, cache), source, count)
                rounds.append((bare, misses, hits, late))
                size = cache.stat().st_size
    finally:
        server.stop()
    print(f"{count:,} records, -j 64, zero-latency fake server, {len(rounds)} rounds\n")
    print("| run | wall s | records/s | CPU µs/record | peak RSS MB |")
    print("|---|---:|---:|---:|---:|")
    for runs in rounds:
        for run in runs:
            print(
                f"| {run.name} | {run.wall:.2f} | {run.rate:,.0f} | "
                f"{run.cpu / run.records * 1e6:,.0f} | {run.rss_mb:.1f} |"
            )
    print(f"\ncache file: {size / 1e6:.1f} MB")
    speedups = sorted(hits.rate / bare.rate for bare, _, hits, _ in rounds)
    costs = sorted(misses.cpu / bare.cpu for bare, misses, _, _ in rounds)
    print(
        f"fully cached rerun ÷ uncached rate, per round: {', '.join(f'{x:.1f}' for x in speedups)}"
        f"; median **{speedups[len(speedups) // 2]:.1f} x** (target ≥ 10)"
    )
    bare_wall = sum(bare.wall for bare, *_ in rounds)
    total = bare_wall / sum(hits.wall for _, _, hits, _ in rounds)
    later = bare_wall / sum(late.wall for *_, late in rounds)
    cpu = sum(misses.cpu for _, misses, _, _ in rounds) / sum(bare.cpu for bare, *_ in rounds)
    print(
        f"over all rounds: rate {total:.1f} x ({later:.1f} x when the last uses are "
        f"rewritten), CPU on misses {cpu:.2f}"
    )
    print(
        f"CPU per record on misses ÷ without cache, per round: "
        f"{', '.join(f'{x:.2f}' for x in costs)}; median **{costs[len(costs) // 2]:.2f}** "
        "(target ≤ 1.2)"
    )


if __name__ == "__main__":
    main()
