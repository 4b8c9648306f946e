"""Resume: how long building the skip set from a 1,000,000-record output takes, and the cost
of the run that supersedes its error records.

    python bench/resume_scan.py [COUNT]

Writes an agents-map-like output of COUNT records, 1 % of them error records (JSONL, then CSV
and SQLite through agents-write), then times in separate processes: reading each output's done
IDs (agents.done.ids.done_ids), a whole `agents-map --resume --keep-failed` over the input (it
must send nothing; its endpoint is a closed port, so a request would fail), and
`agents-write --append` of a success for every failed ID, which supersedes the error records and
compacts the output (a streaming rewrite through a temporary file).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
BIN = Path(sys.executable).parent


def timed(command: list[str], stdin: Path | None = None) -> tuple[float, float, float]:
    with open(stdin or os.devnull, "rb") as source, open(os.devnull, "wb") as sink:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdin=source, stdout=sink)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(command)}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    DATA.mkdir(exist_ok=True)
    source = DATA / f"resume_input_{count}.jsonl"
    output = DATA / f"resume_output_{count}.jsonl"
    with source.open("wb") as inputs, output.open("wb") as outputs:
        for number in range(1, count + 1):
            record = {"_id": number, "word": f"word{number}"}
            inputs.write(orjson.dumps(record) + b"\n")
            if number % 100 == 0:
                result = {**record, "result": None, **failure(number, record)}
            else:
                result = {**record, "result": f"answer for word{number}"}
            outputs.write(orjson.dumps(result) + b"\n")
    fixes = DATA / f"resume_fixes_{count}.jsonl"
    with fixes.open("wb") as stream:
        for number in range(100, count + 1, 100):
            fixed = {"_id": number, "word": f"word{number}", "result": f"answer {number}"}
            stream.write(orjson.dumps(fixed) + b"\n")
    for fmt in ("csv", "db"):
        target = DATA / f"resume_output_{count}.{fmt}"
        if target.exists():
            target.unlink()
        subprocess.run(
            [str(BIN / "agents-write"), str(target)], stdin=output.open("rb"), check=True
        )
    print("| what | records | wall s | CPU s | peak RSS MB |\n|---|---:|---:|---:|---:|")
    for fmt, path in (
        ("jsonl", output),
        ("csv", DATA / f"resume_output_{count}.csv"),
        ("sqlite", DATA / f"resume_output_{count}.db"),
    ):
        code = (
            "from agents.done.ids import Output, done_ids; "
            f"d = done_ids(Output({str(path)!r}, {fmt!r})); "
            f"assert len(d.succeeded) + len(d.failed) == {count}"
        )
        wall, cpu, rss = timed([sys.executable, "-c", code])
        print(f"| done IDs of a {fmt} output | {count:,} | {wall:.2f} | {cpu:.2f} | {rss:.0f} |")
    sidecar = Path(str(output) + ".agents-job.jsonl")
    if sidecar.exists():
        sidecar.unlink()
    command = [
        str(BIN / "agents-map"),
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--prompt",
        "{word}",
        "--resume",
        str(output),
        "--keep-failed",
        "-q",
    ]
    wall, cpu, rss = timed(command, source)
    print(
        f"| `agents-map --resume --keep-failed`, every record done | {count:,} | {wall:.2f} | "
        f"{cpu:.2f} | {rss:.0f} |"
    )
    for fmt, path in (("jsonl", output), ("csv", DATA / f"resume_output_{count}.csv")):
        wall, cpu, rss = timed([str(BIN / "agents-write"), "--append", str(path)], fixes)
        print(
            f"| `agents-write --append` superseding 1 % error records of a {fmt} output "
            f"(compaction) | {count:,} | {wall:.2f} | {cpu:.2f} | {rss:.0f} |"
        )


def failure(number: int, record: dict[str, object]) -> dict[str, object]:
    return {"error": "HTTP 500", "error_type": "server_error", "attempts": 4, "item": record}


if __name__ == "__main__":
    main()
