"""agents-map against the embedded local model, beside a minimal client, at -j 1, 2, 4 and 8.

    python bench/local_model.py [--records 40] [--runs 3]

The server is started once (agents-local, 4 parallel slots). Both clients send the same prompts
("Translate the word ... into French.") with temperature 0, seed 42 and max_tokens 32; each
figure is the median of --runs runs, wall time from launch to exit. Target: agents-map at
least 95 % of the minimal client's records/s at every -j.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
BIN = Path(sys.executable).parent
PROMPT = "Translate the word {word} into French. Answer with one word."
EXTRA = {"temperature": 0, "seed": 42, "max_tokens": 32}


def timed(command: list[str], source: Path, env: dict[str, str]) -> float:
    with source.open("rb") as stdin, open(os.devnull, "wb") as sink:
        start = time.perf_counter()
        done = subprocess.run(command, stdin=stdin, stdout=sink, env=env)
        wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=40)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    DATA.mkdir(exist_ok=True)
    words = ["apple", "river", "stone", "light", "garden", "window", "silver", "quiet"]
    source = DATA / "local_words.jsonl"
    bare_source = DATA / "local_words_bare.jsonl"
    with source.open("wb") as ours, bare_source.open("wb") as bare:
        for number in range(1, args.records + 1):
            word = words[number % len(words)]
            ours.write(orjson.dumps({"_id": number, "word": word}) + b"\n")
            bare.write(orjson.dumps({"_id": number, "word": PROMPT.format(word=word)}) + b"\n")
    env = {**os.environ, "AGENTS_RUNTIME_DIR": str(DATA / "runtime")}
    url = subprocess.run(
        [str(BIN / "agents-local"), "start"], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        print(
            "| -j | minimal client records/s | agents-map records/s | ratio |\n"
            "|---:|---:|---:|---:|"
        )
        for jobs in (1, 2, 4, 8):
            bare_command = [
                sys.executable,
                str(HERE / "bare_client.py"),
                url + "/chat/completions",
                str(jobs),
                orjson.dumps(EXTRA).decode(),
            ]
            ours_command = [
                str(BIN / "agents-map"),
                "--base-url",
                url,
                "--prompt",
                PROMPT,
                "-j",
                str(jobs),
                "--temperature",
                "0",
                "--seed",
                "42",
                "--max-tokens",
                "32",
                "-q",
                "--model",
                "bench",
            ]
            bare_rates, our_rates = [], []
            for _ in range(args.runs):
                bare_rates.append(args.records / timed(bare_command, bare_source, env))
                our_rates.append(args.records / timed(ours_command, source, env))
            bare_rate = statistics.median(bare_rates)
            our_rate = statistics.median(our_rates)
            print(
                f"| {jobs} | {bare_rate:.2f} | {our_rate:.2f} | {our_rate / bare_rate:.1%} |",
                flush=True,
            )
    finally:
        subprocess.run([str(BIN / "agents-local"), "stop"], env=env, check=False)


if __name__ == "__main__":
    main()
