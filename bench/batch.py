"""Batch mode (issue 17): building and uploading the request files, side by side in one run.

    python bench/batch.py [--records 100000]

For 10,000 and then --records records (-m gpt-4o-mini, one short prompt each), against the fake
Batch API of the tests (tests/fake_batch.py) in its own process:

  (1) agents-map --batch --dry-run: the request lines built and written, nothing sent;
  (2) agents-map --batch --batch-detach: the lines built into part files, uploaded and the
      batches created, then exit 4;

wall time, CPU and peak RSS of each. The files are streamed, never held in memory: peak RSS
should stay flat as the records grow tenfold.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from map_client import BIN, Measure, records_file

HERE = Path(__file__).resolve().parent
SERVE = """
import sys, time
sys.path.insert(0, {tests!r})
from fake_batch import FakeBatchAPI
with FakeBatchAPI(steps=10**9) as api:
    print(api.port, flush=True)
    sys.stdin.read()
"""


def measure(name: str, command: list[str], source: Path, records: int, ok: int) -> Measure:
    import time

    with source.open("rb") as stdin, open(os.devnull, "wb") as sink:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdin=stdin, stdout=sink, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != ok:
        raise SystemExit(f"{name} failed: {' '.join(command)}")
    return Measure(name, records, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=100_000)
    options = parser.parse_args()
    server = subprocess.Popen(
        [sys.executable, "-c", SERVE.format(tests=str(HERE.parent / "tests"))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert server.stdout is not None and server.stdin is not None
    url = f"http://127.0.0.1:{int(server.stdout.readline())}/v1"
    os.environ.setdefault("OPENAI_API_KEY", "bench")
    rows: list[Measure] = []
    try:
        with tempfile.TemporaryDirectory() as state:
            os.environ["XDG_STATE_HOME"] = state
            for count in (10_000, options.records):
                source = records_file(count)
                base = [
                    str(BIN / "agents-map"), "--batch", "--base-url", url, "-m", "gpt-4o-mini",
                    "--prompt", "Translate {word} to French.", "-q",
                ]  # fmt: skip
                rows.append(
                    measure("--dry-run (build only)", [*base, "--dry-run"], source, count, 0)
                )
                rows.append(
                    measure(
                        "--batch-detach (build, upload, create)",
                        [*base, "--batch-detach"],
                        source,
                        count,
                        4,
                    )
                )
    finally:
        server.stdin.close()
        server.wait()
    print("| run | records | wall s | CPU µs/record | peak RSS MB |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row.name} | {row.records:,} | {row.wall:.2f} | "
            f"{row.cpu / row.records * 1e6:.0f} | {row.rss_mb:.1f} |"
        )
    small, large = rows[1], rows[3]
    per_record = [run.cpu / run.records * 1e6 for run in (large, small)]
    print(
        f"\nsubmit, {large.records:,} ÷ {small.records:,} records: peak RSS "
        f"{large.rss_mb - small.rss_mb:+.1f} MB; CPU a record {per_record[0]:.0f} vs "
        f"{per_record[1]:.0f} µs; upload and create over building: "
        f"{large.wall / rows[2].wall:.2f} x the wall time"
    )


if __name__ == "__main__":
    main()
