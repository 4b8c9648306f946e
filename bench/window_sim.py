"""The window of requests in flight (agents/map/congestion.py) against simulated servers, on a
simulated clock: what it settles at, how fast it follows a server that changes, and what share
of requests the server refuses. No network, no real time: each scenario takes a second or two.

Each server takes a number of requests at once that may change over time, answers in 50 ms
(``--latency``) and refuses the rest at once (a 429 or 503 without headers), as a slot-limited
server does; with ``--noise`` it also fails that share of requests whatever the load.

    python bench/window_sim.py [--noise 0.05] [--latency 1.0]
"""

from __future__ import annotations

import argparse
import heapq
import random
from collections.abc import Callable

from agents.map.congestion import Signal, Window

MARKS = (1, 2, 5, 10, 20, 30, 60, 90)

SCENARIOS: dict[str, tuple[int, Callable[[float], int]]] = {
    "-j 200, 2 slots": (200, lambda now: 2),
    "-j 64, 8 slots": (64, lambda now: 8),
    "-j 64, 48 slots": (64, lambda now: 48),
    "-j 300, 2 slots then 300 from 5 s": (300, lambda now: 2 if now < 5 else 300),
    "-j 64, 2 slots then 20 from 5 s": (64, lambda now: 2 if now < 5 else 20),
    "-j 64, 64 slots, 8 from 10 to 12 s": (64, lambda now: 8 if 10 <= now < 12 else 64),
    "-j 64, 48 slots, 4 from 10 to 15 s": (64, lambda now: 4 if 10 <= now < 15 else 48),
    "-j 64, 2 slots, 64 from 30 s": (64, lambda now: 2 if now < 30 else 64),
    "-j 64, no limit": (64, lambda now: 10**9),
}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(
    ceiling: int, capacity: Callable[[float], int], noise: float, latency: float, seed: int
) -> tuple[list[int], int, int]:
    """(the window at each of MARKS, requests sent, requests refused)."""
    rng = random.Random(seed)
    clock = Clock()
    window = Window(ceiling, clock)
    events: list[tuple[float, int, int, Signal, float]] = []
    now = 0.0
    in_flight = sent = refused = 0
    marks, seen = list(MARKS), []
    while marks:
        while in_flight < window.limit:
            if in_flight >= capacity(now):
                signal, took = Signal.FAILED, 0.001
            elif rng.random() < noise:
                signal, took = Signal.FAILED, latency
            else:
                signal, took = Signal.OK, latency
            refused += signal is not Signal.OK
            heapq.heappush(events, (now + took, sent, window.epoch, signal, now))
            in_flight, sent = in_flight + 1, sent + 1
        now, _, epoch, signal, sent_at = heapq.heappop(events)
        clock.now = now
        in_flight -= 1
        window.observe(epoch, signal, sent_at)
        while marks and now >= marks[0]:
            marks.pop(0)
            seen.append(window.limit)
    return seen, sent, refused


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--noise", type=float, default=0.0)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(
        f"window at each second mark; answers in {args.latency:g} s,"
        f" noise {args.noise:.0%}, seed {args.seed}\n"
    )
    print("| server | " + " | ".join(f"{mark} s" for mark in MARKS) + " | refused |")
    print("|---|" + "---:|" * (len(MARKS) + 1))
    for name, (ceiling, capacity) in SCENARIOS.items():
        seen, sent, refused = run(ceiling, capacity, args.noise, args.latency, args.seed)
        cells = " | ".join(str(limit) for limit in seen)
        print(f"| {name} | {cells} | {refused / sent:.2%} of {sent:,} |")


if __name__ == "__main__":
    main()
