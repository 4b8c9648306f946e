"""What --status and --stream cost (issue 20), measured side by side in one run against
bench/fake_server.py in its own process:

1. --status: CPU per record with --status DIR/ beside without, 20,000 records at -j 64 against
   a zero-latency server, three pairs, alternating (target: ≤ 1.05 times);
2. --stream: records/s streamed beside whole answers, 5,000 records at -j 200 against a 200 ms
   server (target: ≥ 0.9 times).

    python bench/status_stream.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from map_client import HEADER, Measure, Server, measure, ours, records_file, row


def pairs(
    server: Server, jobs: int, count: int, flags: list[str], label: str, rounds: int
) -> list[tuple[Measure, Measure]]:
    """``rounds`` pairs, the one without the flags first in even rounds and second in odd ones
    (whichever runs second finds the machine warmer)."""
    source = records_file(count)
    out = []
    for round_number in range(rounds):
        command = [*ours(server, jobs), "-q"]

        def plain(command: list[str] = command) -> Measure:
            return measure("agents-map", command, source, count)

        def flagged(command: list[str] = command) -> Measure:
            return measure(f"agents-map {label}", [*command, *flags], source, count)

        if round_number % 2:
            second, first = flagged(), plain()
        else:
            first, second = plain(), flagged()
        out.append((first, second))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    scale = 5 if args.quick else 1
    with tempfile.TemporaryDirectory() as folder:
        status = str(Path(folder) / "status") + "/"
        Path(status).mkdir()
        server = Server(0.0)
        try:
            runs = pairs(server, 64, 20_000 // scale, ["--status", status], "--status DIR/", 4)
        finally:
            server.stop()
        print("1. --status, -j 64, zero latency\n\n" + HEADER)
        for plain, flagged in runs:
            print(row(plain))
            print(row(flagged))
        ratios = [f.cpu / p.cpu for p, f in runs]
        print(
            f"\nCPU per record with --status ÷ without: {statistics.median(ratios):.3f} "
            f"(median of {', '.join(f'{r:.3f}' for r in ratios)}; target ≤ 1.05)\n"
        )
        server = Server(0.2)
        try:
            runs = pairs(server, 200, 5_000 // scale, ["--stream"], "--stream", 2)
        finally:
            server.stop()
        print("2. --stream, -j 200, 200 ms latency\n\n" + HEADER)
        for plain, flagged in runs:
            print(row(plain))
            print(row(flagged))
        ratios = [f.rate / p.rate for p, f in runs]
        print(
            f"\nrecords/s streamed ÷ whole: {statistics.median(ratios):.3f} "
            f"(median of {', '.join(f'{r:.3f}' for r in ratios)}; target ≥ 0.9)"
        )


if __name__ == "__main__":
    main()
