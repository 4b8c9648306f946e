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
import pytest
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
    assert all("error_type" not in record for record in records)
    # The records that had no output after Ctrl-C (a retry or a send was pending) were sent by
    # the rerun, and only they: nothing written the first time was asked for again.
    answered_first = {f"p {record['_id']}" for record in first}
    asked_again = {prompt for _, prompt in clock.arrivals[sent_first + len(late) :]}
    assert asked_again == {f"p {i}" for i in range(16)} - answered_first


# --max-cost --------------------------------------------------------------------------------


def test_requests_that_fit_the_cap_exactly_fit_though_floats_add_up_past_it() -> None:
    import asyncio

    from agents.map.caps import CapReached, CostCap

    async def spend() -> int:
        cap, sent = CostCap(0.3), 0
        try:
            for _ in range(4):
                worst = await cap.reserve(lambda: 0.1)
                cap.settle(worst, 0.1)
                sent += 1
        except CapReached:
            pass
        return sent

    assert 0.1 + 0.1 + 0.1 > 0.3  # (the rounding the cap must forgive)
    assert asyncio.run(spend()) == 3


PRICE = 10.0  # dollars per million tokens, both ways: a request of ~100 tokens costs ~$0.001


class Billed:
    """Answers after a short random delay with a usage the test chooses; adds up what was
    billed, as a provider would."""

    def __init__(self, completion: Any, seed: int) -> None:
        import random

        self.completion = completion  # a function of (request, random) giving answer tokens
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.billed: list[int] = []  # tokens of each answered request

    def __call__(self, request: dict[str, Any], number: int) -> Reply:
        prompt = sum(len(m["content"]) // 4 + 4 for m in request["messages"])
        with self.lock:
            completion = self.completion(request, self.random)
            delay = self.random.uniform(0, 0.03)
            self.billed.append(prompt + completion)
        return Reply(
            "x",
            delay=delay,
            usage={"prompt_tokens": prompt, "completion_tokens": completion},
        )

    @property
    def spent(self) -> float:
        with self.lock:
            return sum(self.billed) * PRICE / 1e6


def capped_run(url: str, jobs: int, cap: float, *extra: str) -> tuple[int, str]:
    import io

    from test_map import Sleeps

    from agents.cli import map as map_cli
    from agents.cli._run import Streams

    records = jsonl(*({"_id": i, "text": "lorem ipsum " * (i % 7 + 1)} for i in range(400)))
    out, err = io.BytesIO(), io.StringIO()
    status = map_cli.main(
        [
            "--base-url",
            url,
            "-m",
            "m",
            "--prompt",
            "Summarise {_id}: {text}",  # (distinct: identical requests would be shared)
            "--price",
            f"{PRICE},{PRICE}",
            "-j",
            str(jobs),
            "--max-cost",
            str(cap),
            *extra,
        ],
        Streams(stdin=io.BytesIO(records), stdout=out, stderr=err),
        sleep=Sleeps(),
    )
    return status, err.getvalue()


@pytest.mark.parametrize("jobs", [1, 50, 200])
def test_max_cost_spends_up_to_the_cap_at_any_concurrency(jobs: int) -> None:
    # Answers that use all of --max-tokens: the worst case is what is billed, so the run must
    # end within one request's cost of the cap and never above it.
    billed = Billed(lambda request, rng: request["max_tokens"], seed=jobs)
    with FakeLLM(billed) as server:
        status, err = capped_run(server.url, jobs, 0.1, "--max-tokens", "80")
    assert status == 4, err
    assert "stopped at a cap: --max-cost $0.1" in err
    most = max(billed.billed) * PRICE / 1e6
    assert billed.spent <= 0.1
    assert 0.1 - billed.spent <= most, (billed.spent, most, len(billed.billed))


@pytest.mark.parametrize("jobs", [1, 50, 200])
def test_max_cost_with_shorter_answers_gives_back_what_they_did_not_use(jobs: int) -> None:
    billed = Billed(lambda request, rng: rng.randint(1, request["max_tokens"]), seed=jobs)
    with FakeLLM(billed) as server:
        status, err = capped_run(server.url, jobs, 0.1, "--max-tokens", "80")
    assert status == 4, err
    # the next request could have used all of its 80 answer tokens: it did not fit
    worst_of_one = (max(billed.billed) + 80) * PRICE / 1e6
    assert 0.1 - worst_of_one <= billed.spent <= 0.1, (billed.spent, len(billed.billed))


def test_max_cost_without_max_tokens_reserves_the_documented_default() -> None:
    billed = Billed(lambda request, rng: 10, seed=1)
    with FakeLLM(billed) as server:
        status, err = capped_run(server.url, 50, 0.1)
    assert status == 4, err
    assert "max_tokens" not in server.requests[0]
    # 256 answer tokens are reserved for each request when none is given
    assert 0.1 - (max(billed.billed) + 256) * PRICE / 1e6 <= billed.spent <= 0.1


def reasked(request: dict[str, Any], number: int) -> Reply:
    """Not JSON the first time, JSON when asked again; 20 prompt and 50 answer tokens."""
    usage = {"prompt_tokens": 20, "completion_tokens": 50}
    if len(request["messages"]) == 1:
        return Reply("not json", delay=0.05, usage=usage)
    return Reply('{"ok": true}', delay=0.05, usage=usage)


@pytest.mark.parametrize("jobs", [1, 50])
def test_a_reask_always_fits_under_the_cap(tmp: Path, jobs: int) -> None:
    import io

    from test_map import Sleeps

    from agents.cli import map as map_cli
    from agents.cli._run import Streams

    stats = tmp / "stats.json"
    out, err = io.BytesIO(), io.StringIO()
    with FakeLLM(reasked) as server:
        status = map_cli.main(
            [
                "--base-url",
                server.url,
                "-m",
                "m",
                "--prompt",
                "Tr {_id}",
                "--output-format",
                "json",
                "--max-tokens",
                "50",
                "--price",
                "1000,1000",
                "--max-cost",
                "5",
                "-j",
                str(jobs),
                "-q",
                "--stats",
                str(stats),
            ],
            Streams(
                stdin=io.BytesIO(jsonl(*({"_id": i} for i in range(100)))), stdout=out, stderr=err
            ),
            sleep=Sleeps(),
        )
        billed = len(server.requests) * 70 * 1000 / 1e6
    records = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert status == 4, err.getvalue()
    assert records and all("error" not in record for record in records)  # no re-ask starved
    assert orjson.loads(stats.read_bytes())["stopped"] == "max_cost"
    assert billed <= 5


@pytest.mark.parametrize("jobs", [1, 50, 200])
def test_the_cap_holds_when_the_server_counts_more_prompt_tokens(jobs: int) -> None:
    # a server that adds its own system prompt: 100 prompt tokens for a one-word prompt
    billed = Billed(lambda request, rng: request["max_tokens"], seed=jobs)
    original = billed.__call__

    def padded(request: dict[str, Any], number: int) -> Reply:
        reply = original(request, number)
        assert reply.usage is not None
        with billed.lock:
            billed.billed[-1] += 100 - reply.usage["prompt_tokens"]
        reply.usage = {**reply.usage, "prompt_tokens": 100}
        return reply

    with FakeLLM(padded) as server:
        status, err = capped_run(server.url, jobs, 0.1, "--max-tokens", "50")
    assert status == 4, err
    assert billed.spent <= 0.1, (billed.spent, len(billed.billed))
