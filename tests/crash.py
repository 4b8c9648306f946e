"""A crash-consistency harness for the resumable pipeline, in the spirit of Jepsen.

A scenario runs the README's pipeline (``agents-read | agents-map --resume OUT | agents-write
--append OUT``) against a fake server that fails chosen records on chosen attempts (400, 500,
429, dropped connections, hangs), interrupts it at seeded random moments with kill -9, SIGINT or
SIGTERM sent to one stage or to the whole process group, then reruns it until it exits 0. It then
checks the invariant of agents(7):

* the output holds every input ID exactly once, as a success;
* no answer was paid for twice, except one that was still open or in the pipe at a kill -9:
  its first payment ended less than ``IN_PIPE_SECONDS`` before that kill, or after it.

Everything is bounded: a run that outlives ``RUN_TIMEOUT`` is a failure. Used by
tests/test_crash.py (a pairwise sample) and bench/crash_campaign.py (the whole matrix).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from fake_llm import FakeLLM, Reply, last_user_message

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "bin"

OUTPUTS = ("jsonl", "csv", "tsv", "json", "sqlite", "sqlite-table")
JOBS = (1, 8, 64)
SIGNALS = ("KILL", "INT", "TERM")
TARGETS = ("group", "read", "map", "write")

IN_PIPE_SECONDS = 1.0
#: A stage killed by kill -9 is noticed by the others at once (a broken pipe), not before:
#: a request sent in that instant is in flight at the kill.
NOTICE_SECONDS = 0.1
RUN_TIMEOUT = 90.0
MAX_RERUNS = 8
FAULTS = ("400", "500", "429", "drop", "hang")


@dataclass(frozen=True)
class Scenario:
    seed: int
    output: str
    jobs: int
    signal: str
    target: str
    records: int = 0  # 0: 40 plus 4 a job, so that every run has several waves
    interruptions: int = 3

    def __str__(self) -> str:
        return (
            f"seed={self.seed} output={self.output} -j {self.jobs} "
            f"SIG{self.signal} to {self.target}"
        )


@dataclass
class Ledger:
    """What the fake server saw: attempts per word, and when each paid answer was given."""

    plan: dict[str, dict[int, str]]
    attempts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    paid: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))

    def script(self, request: dict[str, Any], number: int) -> Reply:
        word = last_user_message(request)
        self.attempts[word] += 1
        fault = self.plan.get(word, {}).get(self.attempts[word])
        delay = 0.05
        if fault == "400":
            return Reply("this record is refused once", status=400, delay=delay)
        if fault == "500":
            return Reply("server error", status=500, delay=delay)
        if fault == "429":
            return Reply("slow down", status=429, headers={"retry-after-ms": "50"}, delay=delay)
        if fault == "drop":
            return Reply(action="drop", delay=delay)
        if fault == "hang":
            return Reply(action="hang")
        return Reply(f"answer {word}", delay=delay)

    def answered(self, request: dict[str, Any], arrived: float) -> None:
        self.paid[last_user_message(request)].append((arrived, time.time()))


@dataclass
class Report:
    scenario: Scenario
    kills: list[tuple[str, float]] = field(default_factory=list)  # (moment, seconds after start)
    runs: list[int] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    ids_checked: int = 0

    def __str__(self) -> str:
        moments = ", ".join(f"{kind}@{at:.2f}s" for kind, at in self.kills)
        return f"{self.scenario}: interrupted at [{moments}], exit statuses {self.runs}"


def fault_plan(seed: int, words: list[str]) -> dict[str, dict[int, str]]:
    """A quarter of the records fail on their first one or two attempts; hangs are rare."""
    chooser = random.Random(seed)
    plan: dict[str, dict[int, str]] = {}
    for word in words:
        if chooser.random() < 0.25:
            kinds = [chooser.choice(FAULTS[:4]) for _ in range(chooser.choice((1, 1, 2)))]
            if chooser.random() < 0.05:
                kinds[0] = "hang"
            plan[word] = {attempt: kind for attempt, kind in enumerate(kinds, 1)}
    return plan


def output_args(kind: str, folder: Path) -> tuple[Path, str, str]:
    """(the output file, what --resume names, agents-write's arguments)."""
    if kind == "sqlite":
        path = folder / "out.db"
        return path, str(path), f"--append {path}"
    if kind == "sqlite-table":
        path = folder / "out.db"
        return path, str(path), f"--append {path} --table results"
    path = folder / f"out.{kind}"
    return path, str(path), f"--append {path}"


def pipeline(scenario: Scenario, source: Path, folder: Path, url: str) -> str:
    _, resume, write_args = output_args(scenario.output, folder)
    return (
        f"set -o pipefail; agents-read {source} --id word "
        f"| agents-map --base-url {url} --prompt '{{word}}' -j {scenario.jobs} -q "
        f"--max-retries 3 --retry-delay 0.05 --timeout 1.5 --grace 10 --resume {resume} "
        f"| agents-write {write_args}"
    )


def environment() -> dict[str, str]:
    python_bin = os.path.dirname(sys.executable)
    return {
        **os.environ,
        "PATH": os.pathsep.join([str(BIN), python_bin, os.environ["PATH"]]),
        "OPENAI_API_KEY": "test-key",
    }


def stage_pids(group: int) -> dict[str, int]:
    """The pipeline's processes by stage name (the shell is the group leader)."""
    found: dict[str, int] = {}
    members = subprocess.run(["pgrep", "-g", str(group)], capture_output=True, text=True)
    for pid in map(int, members.stdout.split()):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        for stage in ("read", "map", "write"):
            if f"agents-{stage}" in args and pid != group:
                found.setdefault(stage, pid)
    return found


def group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def interrupt(process: subprocess.Popen[bytes], scenario: Scenario) -> str:
    signum = getattr(signal, f"SIG{scenario.signal}")
    if scenario.target == "group":
        os.killpg(process.pid, signum)
        return f"{scenario.signal}:group"
    pid = stage_pids(process.pid).get(scenario.target)
    if pid is None:
        return "none"
    os.kill(pid, signum)
    return f"{scenario.signal}:{scenario.target}"


def finish(process: subprocess.Popen[bytes], deadline: float) -> int:
    """Wait for the shell and every stage; kill what outlives the deadline (a violation)."""
    try:
        status = process.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return -1
    while group_alive(process.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if group_alive(process.pid):
        os.killpg(process.pid, signal.SIGKILL)
        return -1
    return status


def run_scenario(scenario: Scenario, folder: Path) -> Report:
    if not scenario.records:
        scenario = dataclasses.replace(scenario, records=40 + 4 * scenario.jobs)
    report = Report(scenario)
    chooser = random.Random(scenario.seed * 7919 + 1)
    words = [f"w{n}" for n in range(1, scenario.records + 1)]
    source = folder / "words.csv"
    source.write_text("word\n" + "".join(f"{word}\n" for word in words))
    ledger = Ledger(fault_plan(scenario.seed, words))
    kill_moments: list[float] = []
    with FakeLLM(ledger.script, ledger.answered) as server:
        command = pipeline(scenario, source, folder, server.url)
        for _ in range(scenario.interruptions):
            process = _start(command, folder)
            started = time.monotonic()
            answered = sum(map(len, ledger.paid.values()))
            left = scenario.records - len(ledger.paid)
            goal = answered + chooser.randint(0, max(1, int(left * 0.8)))
            while sum(map(len, ledger.paid.values())) < goal and process.poll() is None:
                time.sleep(0.002)
            time.sleep(chooser.uniform(0, 0.05))
            if process.poll() is not None:
                report.runs.append(process.returncode)
                break
            kind = interrupt(process, scenario)
            if kind != "none":
                kill_moments.append(time.time())
                report.kills.append((kind, time.monotonic() - started))
            report.runs.append(finish(process, time.monotonic() + RUN_TIMEOUT))
        for _ in range(MAX_RERUNS):
            process = _start(command, folder)
            status = finish(process, time.monotonic() + RUN_TIMEOUT)
            report.runs.append(status)
            if status == 0:
                break
        else:
            report.violations.append(f"no run exited 0 in {MAX_RERUNS} reruns")
    check(report, words, ledger, kill_moments, folder)
    return report


def _start(command: str, folder: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["bash", "-c", command],
        cwd=folder,
        env=environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        process_group=0,
    )


def records_in(path: Path, kind: str) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    if kind in ("sqlite", "sqlite-table"):
        table = "results" if kind == "sqlite-table" else "records"
        connection = sqlite3.connect(path)
        connection.row_factory = sqlite3.Row
        try:
            return [dict(row) for row in connection.execute(f"SELECT * FROM {table}")]
        finally:
            connection.close()
    data = path.read_bytes()
    if kind == "jsonl":
        return [orjson.loads(line) for line in data.splitlines() if line.strip()]
    if kind == "json":
        return list(orjson.loads(data))
    import csv
    import io

    delimiter = "\t" if kind == "tsv" else ","
    return list(csv.DictReader(io.StringIO(data.decode()), delimiter=delimiter))


def check(
    report: Report,
    words: list[str],
    ledger: Ledger,
    kill_moments: list[float],
    folder: Path,
) -> None:
    scenario = report.scenario
    path, _, _ = output_args(scenario.output, folder)
    records = records_in(path, scenario.output)
    ids = [str(record.get("_id")) for record in records]
    report.ids_checked = len(words)
    counts: dict[str, int] = defaultdict(int)
    for record_id in ids:
        counts[record_id] += 1
    repeated = sorted(key for key, times in counts.items() if times > 1)
    missing = sorted(set(words) - set(counts))
    if repeated:
        report.violations.append(f"IDs held more than once: {repeated[:10]}")
    if missing:
        report.violations.append(f"IDs missing: {missing[:10]}")
    failed = [str(r.get("_id")) for r in records if r.get("error") and r.get("error_type")]
    if failed:
        report.violations.append(f"error records left after exit 0: {failed[:10]}")
    kills_9 = [
        at
        for (kind, _), at in zip(report.kills, kill_moments, strict=True)
        if kind.startswith("KILL")
    ]
    for word, payments in ledger.paid.items():
        for started, ended in payments[:-1]:  # every payment but the last was paid again
            excused = any(
                ended >= at - IN_PIPE_SECONDS and started <= at + NOTICE_SECONDS for at in kills_9
            )
            if not excused:
                report.violations.append(
                    f"{word} was paid {len(payments)} times; a payment that ended "
                    f"{_moment(ended, kill_moments)} was not in flight at a kill -9"
                )
                break


def _moment(when: float, kills: list[float]) -> str:
    if not kills:
        return "with no kill"
    nearest = min(kills, key=lambda at: abs(at - when))
    return f"{when - nearest:+.2f}s from the nearest interruption"


def pairwise(seed: int, count: int) -> list[Scenario]:
    """``count`` scenarios covering as many (dimension, dimension) value pairs as they can."""
    chooser = random.Random(seed)
    dimensions = [OUTPUTS, JOBS, SIGNALS, TARGETS]
    uncovered = {
        (i, a, j, b)
        for i, j in itertools.combinations(range(len(dimensions)), 2)
        for a in dimensions[i]
        for b in dimensions[j]
    }
    chosen: list[Scenario] = []
    candidates = list(itertools.product(*dimensions))
    for number in range(count):
        chooser.shuffle(candidates)

        def gain(values: tuple[Any, ...]) -> int:
            return sum(
                (i, values[i], j, values[j]) in uncovered
                for i, j in itertools.combinations(range(len(values)), 2)
            )

        best = max(candidates, key=gain)
        for i, j in itertools.combinations(range(len(best)), 2):
            uncovered.discard((i, best[i], j, best[j]))
        chosen.append(Scenario(seed + number, best[0], best[1], best[2], best[3]))
    return chosen


def full_matrix(seed: int) -> list[Scenario]:
    return [
        Scenario(seed + number, *values)
        for number, values in enumerate(itertools.product(OUTPUTS, JOBS, SIGNALS, TARGETS))
    ]
