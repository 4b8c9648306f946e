"""CSV ⇄ JSONL: agents-read and agents-write beside DuckDB and csvkit, measured in one run.

    python bench/csv_jsonl.py                 # 10 k, 100 k and 1 M rows
    python bench/csv_jsonl.py --sizes 10000 --repeat 1   # a quick look

Every command is a separate process timed from launch to exit; CPU time (user + sys) and peak
RSS come from the kernel's rusage of that process (os.wait4). Needs `pip install -e '.[bench]'`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
BIN = Path(sys.executable).parent


@dataclass
class Measure:
    name: str
    rows: int
    wall: float
    cpu: float
    rss_mb: float

    @property
    def rate(self) -> float:
        return self.rows / self.wall


REPEAT = 3


def measure(
    name: str, rows: int, command: list[str], stdin: Path | None = None, stdout: Path | None = None
) -> Measure:
    """The run with the median wall time of REPEAT runs."""
    runs = sorted(
        (measure_once(name, rows, command, stdin, stdout) for _ in range(REPEAT)),
        key=lambda m: m.wall,
    )
    return runs[len(runs) // 2]


def measure_once(
    name: str, rows: int, command: list[str], stdin: Path | None, stdout: Path | None
) -> Measure:
    with open(stdin or os.devnull, "rb") as source, open(stdout or os.devnull, "wb") as sink:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdin=source, stdout=sink)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{name} failed: {' '.join(command)}")
    return Measure(name, rows, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


def duckdb(sql: str) -> list[str]:
    return [sys.executable, "-c", f"import duckdb; duckdb.sql({sql!r})"]


def rows_file(count: int) -> Path:
    path = DATA / f"rows_{count}.csv"
    if not path.exists():
        DATA.mkdir(exist_ok=True)
        subprocess.run(
            [sys.executable, str(HERE / "generate.py"), str(count), str(path)], check=True
        )
    return path


def run(sizes: list[int]) -> list[Measure]:
    results: list[Measure] = []
    for count in sizes:
        csv = rows_file(count)
        jsonl = DATA / f"rows_{count}.jsonl"
        results.append(
            measure(
                "agents-read rows.csv > rows.jsonl",
                count,
                [str(BIN / "agents-read"), str(csv)],
                stdout=jsonl,
            )
        )
        results.append(
            measure(
                "agents-write out.csv < rows.jsonl",
                count,
                [str(BIN / "agents-write"), str(DATA / "out.csv")],
                stdin=jsonl,
            )
        )
        if count != max(sizes):
            continue
        results.append(
            measure(
                "duckdb COPY csv → json",
                count,
                duckdb(
                    f"COPY (SELECT * FROM read_csv('{csv}', all_varchar=true)) "
                    f"TO '{DATA / 'duck.jsonl'}' (FORMAT json)"
                ),
            )
        )
        results.append(
            measure(
                "duckdb COPY json → csv",
                count,
                duckdb(
                    f"COPY (SELECT * FROM read_json('{jsonl}')) TO '{DATA / 'duck.csv'}' (HEADER)"
                ),
            )
        )
        results.append(
            measure(
                "csvjson --stream rows.csv", count, [str(BIN / "csvjson"), "--stream", str(csv)]
            )
        )
    return results


def report(results: list[Measure]) -> str:
    lines = [
        "| command | rows | wall s | CPU s | rows/s | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m in results:
        lines.append(
            f"| `{m.name}` | {m.rows:,} | {m.wall:.2f} | {m.cpu:.2f} | "
            f"{m.rate:,.0f} | {m.rss_mb:.1f} |"
        )
    by_name = {(m.name, m.rows): m for m in results}
    top = max(m.rows for m in results)
    ours_read = by_name.get(("agents-read rows.csv > rows.jsonl", top))
    ours_write = by_name.get(("agents-write out.csv < rows.jsonl", top))
    duck_read = by_name.get(("duckdb COPY csv → json", top))
    duck_write = by_name.get(("duckdb COPY json → csv", top))
    csvkit = by_name.get(("csvjson --stream rows.csv", top))
    lines.append("")
    if ours_read and duck_read and ours_write and duck_write and csvkit:
        lines += [
            f"- read, wall time ÷ DuckDB's: {ours_read.wall / duck_read.wall:.2f} (target ≤ 4)",
            f"- write, wall time ÷ DuckDB's: {ours_write.wall / duck_write.wall:.2f} (target ≤ 4)",
            f"- read, throughput ÷ csvkit's: {ours_read.rate / csvkit.rate:.1f} (target ≥ 10)",
        ]
    for name in ("agents-read rows.csv > rows.jsonl", "agents-write out.csv < rows.jsonl"):
        rss = [m.rss_mb for m in results if m.name == name]
        lines.append(
            f"- `{name}` peak RSS by size: "
            + ", ".join(f"{r:.1f}" for r in rss)
            + " MB (target: flat, under 100 MB)"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[10_000, 100_000, 1_000_000],
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=REPEAT,
        help="runs per command; the median wall time is reported (default: 3)",
    )
    args = parser.parse_args()
    globals()["REPEAT"] = args.repeat
    print(f"Each figure: the median of {args.repeat} runs, by wall time.\n")
    print(report(run(args.sizes)))


if __name__ == "__main__":
    main()
