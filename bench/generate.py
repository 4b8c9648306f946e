"""Generate a CSV of N rows, 5 columns, some fields quoted (commas, quotes, newlines)."""

from __future__ import annotations

import random
import sys

WORDS = ["apple", "river", "stone", "light", "garden", "window", "silver", "quiet", "north"]


def row(rng: random.Random, number: int) -> str:
    word = rng.choice(WORDS)
    note = " ".join(rng.choices(WORDS, k=rng.randint(2, 8)))
    roll = rng.random()
    if roll < 0.2:
        note = f'"{note}, and {rng.choice(WORDS)}"'  # a comma inside quotes
    elif roll < 0.25:
        note = f'"she said ""{rng.choice(WORDS)}"""'  # escaped quotes
    elif roll < 0.27:
        note = f'"two\n{note}"'  # a newline inside quotes
    return f"{number},{word},{rng.randint(0, 10**6)},{rng.random():.6f},{note}\n"


def main() -> None:
    count, path = int(sys.argv[1]), sys.argv[2]
    rng = random.Random(42)
    with open(path, "w") as out:
        out.write("id,word,count,score,note\n")
        out.writelines(row(rng, number) for number in range(1, count + 1))


if __name__ == "__main__":
    main()
