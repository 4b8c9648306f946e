"""Full speed under faults that do not depend on load (issue 15), side by side in one run.

    python bench/faults.py [--records 3000] [--jobs 64] [--seed 1]

bench/faulty_server.py gives each attempt, independently, a 429 with Retry-After: 1 (5 %), a
500 (5 %) or a dropped connection (2 %). Against it, on the same records: the minimal client
(bench/retrying_client.py: exact Retry-After, 0.5 s doubling), agents-map with its defaults
(--retry-delay 0.5), and agents-map with --retry-delay 1. The server runs on core 0 and the
client on core 1 when taskset is there. Prints wall time, records/s and each client's ratio
to the minimal one; the time to 95 % of the records and its ratio (the wall time ends with the
record whose retries took longest, a tail that varies from run to run); and the retries that
came earlier than a Retry-After allowed. Target: agents-map >= 0.9 x the minimal
client, 0 early retries.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def pinned(core: int, command: list[str]) -> list[str]:
    return ["taskset", "-c", str(core), *command] if shutil.which("taskset") else command


def one_run(
    name: str, client: list[str], source: Path, total: int, seed: int, folder: Path
) -> dict[str, float]:
    port = free_port()
    stats_file = folder / f"{name}.stats.json"
    server = subprocess.Popen(
        pinned(
            0,
            [
                sys.executable,
                str(HERE / "faulty_server.py"),
                str(port),
                str(stats_file),
                "--seed",
                str(seed),
            ],
        ),
        stdout=subprocess.PIPE,
    )
    assert server.stdout is not None and server.stdout.readline().strip() == b"ready"
    url = f"http://127.0.0.1:{port}/v1"
    command = [part.replace("{url}", url) for part in client]
    started = time.monotonic()
    ninety_five = 0.0
    results = 0
    with source.open("rb") as stdin:
        process = subprocess.Popen(
            pinned(1, command),
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={
                **os.environ,
                "AGENTS_RUNTIME_DIR": str(folder / "runtime"),
                "OPENAI_API_KEY": "x",
            },
        )
        assert process.stdout is not None and process.stderr is not None
        for line in process.stdout:
            if b'"result"' in line:
                results += 1
                if results == int(0.95 * total):
                    ninety_five = time.monotonic() - started
        error = process.stderr.read()
        returncode = process.wait()
    seconds = time.monotonic() - started
    server.terminate()
    server.wait()
    counts = orjson.loads(stats_file.read_bytes())
    if returncode not in (0, 3):
        print(f"{name}: exit {returncode}: {error.decode()[-500:]}", file=sys.stderr)
    return {"seconds": seconds, "results": results, "ninety_five": ninety_five, **counts}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=3000)
    parser.add_argument("--jobs", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    agents_map = [
        str(BIN / "agents-map"),
        "--base-url",
        "{url}",
        "-m",
        "bench",
        "--prompt",
        "{word}",
        "-q",
        "-j",
        str(args.jobs),
        "--max-retries",
        "6",
    ]
    clients = {
        "minimal client (exact Retry-After, 0.5 s doubling)": [
            sys.executable,
            str(HERE / "retrying_client.py"),
            "{url}/chat/completions",
            str(args.jobs),
        ],
        "agents-map (defaults)": agents_map,
        "agents-map --retry-delay 1 (the design document's value)": [
            *agents_map,
            "--retry-delay",
            "1",
        ],
    }
    print(
        f"{args.records:,} records, -j {args.jobs}, seed {args.seed}\n\n"
        "| client | wall s | records/s | ÷ minimal | s to 95 % | ÷ minimal (95 %) | results |"
        " attempts | early retries |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "records.jsonl"
        with source.open("wb") as out:
            for number in range(args.records):
                out.write(orjson.dumps({"_id": number, "word": f"w{number}"}) + b"\n")
        baseline = baseline_95 = None
        for index, (name, command) in enumerate(clients.items()):
            figures = one_run(f"c{index}", command, source, args.records, args.seed, Path(folder))
            rate = figures["results"] / figures["seconds"]
            baseline = baseline or rate
            baseline_95 = baseline_95 or figures["ninety_five"]
            print(
                f"| {name} | {figures['seconds']:.1f} | {rate:.0f} | {rate / baseline:.2f} | "
                f"{figures['ninety_five']:.1f} | {baseline_95 / figures['ninety_five']:.2f} | "
                f"{figures['results']:,} | {figures['requests']:,} | {figures['early']:,} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
