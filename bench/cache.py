"""The response cache against the zero-latency fake server, -j 64, side by side in one run:

    (1) no cache, (2) --cache on an empty file (every record a miss, its answer kept),
    (3) the same command again (every record a hit, no request).

    python bench/cache.py [--records 100000]

Targets (issue 16): the fully cached rerun at least 10 x the uncached rate, with flat RSS; CPU
per record with --cache on misses at most 1.2 x without.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from map_client import BIN, Measure, Server, measure, records_file


def command(server: Server, cache: Path | None) -> list[str]:
    return [
        str(BIN / "agents-map"),
        *("--base-url", server.url, "-m", "bench", "--prompt", "{word}", "-j", "64", "-q"),
        *(["--cache", str(cache)] if cache is not None else []),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=100_000)
    count = parser.parse_args().records
    source = records_file(count)
    os.environ.setdefault("OPENAI_API_KEY", "bench")
    server = Server(0.0)
    try:
        with tempfile.TemporaryDirectory() as folder:
            cache = Path(folder) / "responses.sqlite"
            runs: list[Measure] = [
                measure("no cache", command(server, None), source, count),
                measure("--cache, all misses", command(server, cache), source, count),
                measure("--cache, all hits", command(server, cache), source, count),
            ]
            size = cache.stat().st_size
    finally:
        server.stop()
    print(f"{count:,} records, -j 64, zero-latency fake server\n")
    print("| run | wall s | records/s | CPU µs/record | peak RSS MB |")
    print("|---|---:|---:|---:|---:|")
    for run in runs:
        print(
            f"| {run.name} | {run.wall:.2f} | {run.rate:,.0f} | "
            f"{run.cpu / run.records * 1e6:,.0f} | {run.rss_mb:.1f} |"
        )
    bare, misses, hits = runs
    print(f"\ncache file: {size / 1e6:.1f} MB")
    print(f"fully cached rerun ÷ uncached rate: **{hits.rate / bare.rate:.1f} x** (target ≥ 10)")
    print(
        f"CPU per record on misses ÷ without cache: **{misses.cpu / bare.cpu:.2f}** "
        "(target ≤ 1.2)"
    )


if __name__ == "__main__":
    main()
