"""Stopping (issue 14, points 1 and 2): after Ctrl-C nothing new is sent, and --max-cost spends
up to its cap at any concurrency without passing it.

The fake server (tests/fake_llm.py) stands in for a provider here: these are timing and fault
tests, which need answers that take a known time and failures on demand.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
from conftest import BIN, jsonl
from fake_llm import FakeLLM, Reply, last_user_message


class Clock:
    """When each request arrived and, for a prompt's first attempt, a 500 when asked to."""

    def __init__(self, fail_first_of: set[str], delay: float) -> None:
        self.fail_first_of = fail_first_of
        self.delay = delay
        self.arrivals: list[tuple[float, str]] = []
        self.lock = threading.Lock()

    def __call__(self, request: dict[str, Any], number: int) -> Reply:
        prompt = last_user_message(request)
        with self.lock:
            first = all(seen != prompt for _, seen in self.arrivals)
            self.arrivals.append((time.time(), prompt))
        if first and prompt in self.fail_first_of:
            return Reply(status=500, body={"error": {"message": "try again"}})
        return Reply(content=f"answer {prompt}", delay=self.delay)

    def after(self, moment: float) -> list[str]:
        with self.lock:
            return [prompt for arrived, prompt in self.arrivals if arrived > moment]


def pipeline(url: str, out: Path, source: Path) -> list[str]:
    command = (
        f"agents-map --base-url {url} -m m --prompt 'p {{n}}' -j 8 --rpm 120 --retry-delay 2 "
        f"--resume {out} < {source} | agents-write --append {out}"
    )
    return ["bash", "-c", command]


def environment() -> dict[str, str]:
    path = os.pathsep.join([str(BIN), os.path.dirname(sys.executable), os.environ["PATH"]])
    return {**os.environ, "PATH": path}


def test_nothing_new_is_sent_after_ctrl_c_and_the_rerun_sends_the_rest(tmp: Path) -> None:
    source = tmp / "in.jsonl"
    source.write_bytes(jsonl(*({"_id": i, "n": i} for i in range(16))))
    out = tmp / "out.jsonl"
    # Every third record fails its first attempt, so retries are waiting on their backoff when
    # the signal comes; --rpm 120 keeps others waiting on the rate budget, -j 8 on a slot.
    clock = Clock({f"p {i}" for i in range(0, 16, 3)}, delay=1.5)
    with FakeLLM(clock) as server:
        job = subprocess.Popen(
            pipeline(server.url, out, source),
            env=environment(),
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while len(clock.arrivals) < 5:
            assert time.monotonic() < deadline, "the job did not start"
            time.sleep(0.01)
        signalled = time.time()
        os.killpg(job.pid, signal.SIGINT)  # Ctrl-C reaches the whole pipeline
        _, stderr = job.communicate(timeout=30)
        late = clock.after(signalled + 0.05)
        sent_first = len(clock.arrivals) - len(late)
        assert len(late) <= 1, (late, stderr)  # one send may race the signal, no more
        assert job.returncode == 130, stderr
        first = [orjson.loads(line) for line in out.read_bytes().splitlines()]
        assert first, stderr
        assert b"waiting to be sent were not sent" in stderr, stderr

        rerun = subprocess.run(
            pipeline(server.url, out, source), env=environment(), capture_output=True, timeout=60
        )
        assert rerun.returncode == 0, rerun.stderr
    records = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert sorted(record["_id"] for record in records) == list(range(16))
    assert all(not str(record.get("_error", "")) for record in records)
    # The records that had no output after Ctrl-C (a retry or a send was pending) were sent by
    # the rerun, and only they: nothing written the first time was asked for again.
    answered_first = {f"p {record['_id']}" for record in first}
    asked_again = {prompt for _, prompt in clock.arrivals[sent_first + len(late) :]}
    assert asked_again == {f"p {i}" for i in range(16)} - answered_first
