"""Identical requests share one (agents/map/sharing.py): in flight at once without --cache, once
a run with it, never with --no-dedup; a shared failure, a cancelled request, and a seeded
campaign that checks a deduplicated run gives every record what a run without it gives."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import jsonl
from fake_llm import FakeLLM, Reply, last_user_message
from test_map import run_map

from agents.map.sharing import Sharing


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("OPENAI_BASE_URL", "HTTP_PROXY", "http_proxy", "AGENTS_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def repeated(count: int, distinct: int, seed: int = 1) -> bytes:
    """``count`` records asking ``distinct`` different questions, shuffled."""
    chooser = random.Random(seed)
    return jsonl(
        *({"_id": n, "word": f"w{chooser.randrange(distinct)}"} for n in range(1, count + 1))
    )


def slow_echo(delay: float) -> Any:
    def script(request: dict[str, Any], number: int) -> Reply:
        return Reply(f"answer: {last_user_message(request)}", delay=delay)

    return script


def by_id(records: list[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    return {record["_id"]: record for record in records}


def test_a_thousand_records_of_fifty_questions_with_a_cache_send_fifty(tmp_path: Path) -> None:
    cache = str(tmp_path / "answers.sqlite")
    with FakeLLM(slow_echo(0.01)) as server:
        result = run_map(
            server, "--prompt", "Say {word}", "--cache", cache, "-j", "64",
            stdin=repeated(1000, 50),
        )  # fmt: skip
        assert result.status == 0
        assert len(server.requests) == 50
        assert max(server.prompts.values()) == 1
    records = result.records
    assert sorted(r["_id"] for r in records) == list(range(1, 1001))
    assert all(r["result"] == f"answer: Say {r['word']}" for r in records)


def test_without_a_cache_identical_requests_in_flight_share_one(tmp_path: Path) -> None:
    stats = tmp_path / "stats.json"
    with FakeLLM(slow_echo(0.3)) as server:
        result = run_map(
            server, "--prompt", "Say {word}", "-j", "200", "--stats", str(stats),
            stdin=repeated(200, 10), quiet=False,
        )  # fmt: skip
        assert result.status == 0
        assert len(server.requests) == 10  # all 200 were in flight at once
    assert "Shared: 190 identical requests answered by one already in flight" in result.stderr
    document = orjson.loads(stats.read_bytes())
    assert document["requests"] == 10 and document["shared"] == 190
    assert all(r["result"] == f"answer: Say {r['word']}" for r in result.records)


def test_no_dedup_sends_every_request(tmp_path: Path) -> None:
    stats = tmp_path / "stats.json"
    with FakeLLM(slow_echo(0.01)) as server:
        result = run_map(
            server, "--prompt", "Say {word}", "-j", "64", "--no-dedup", "--stats", str(stats),
            stdin=repeated(1000, 50), quiet=False,
        )  # fmt: skip
        assert result.status == 0
        assert len(server.requests) == 1000
    assert "Shared:" not in result.stderr
    assert orjson.loads(stats.read_bytes())["shared"] is None


def test_a_job_file_turns_sharing_off(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("processing:\n  dedup: false\n")
    with FakeLLM(slow_echo(0.05)) as server:
        result = run_map(
            server, "-c", str(job), "--prompt", "Say {word}", "-j", "50", stdin=repeated(50, 2)
        )
        assert result.status == 0 and len(server.requests) == 50


def test_later_duplicates_are_sent_again_without_a_cache(tmp_path: Path) -> None:
    """Memory stays bounded: only requests in flight are remembered."""
    with FakeLLM(slow_echo(0.0)) as server:
        result = run_map(server, "--prompt", "Say {word}", "-j", "1", stdin=repeated(20, 2))
        assert result.status == 0 and len(server.requests) == 20


def test_a_shared_failure_fails_every_sharer_with_its_type() -> None:
    def script(request: dict[str, Any], number: int) -> Reply:
        if "bad" in last_user_message(request):
            return Reply("this request is wrong", status=400, delay=0.3)
        return Reply("fine", delay=0.3)

    stdin = jsonl(*({"_id": n, "word": "bad" if n % 2 else "good"} for n in range(1, 41)))
    with FakeLLM(script) as server:
        result = run_map(server, "--prompt", "{word}", "-j", "40", stdin=stdin)
        assert result.status == 3
        assert len(server.requests) == 2
    records = by_id(result.records)
    assert len(records) == 40
    for number, record in records.items():
        if number % 2:
            assert record["error_type"] == "bad_request", record
            assert "this request is wrong" in record["error"]
        else:
            assert record["result"] == "fine"


def test_re_asks_that_are_identical_are_shared_too() -> None:
    """The first answer is not JSON; every record re-asks the same way: two requests in all."""

    def script(request: dict[str, Any], number: int) -> Reply:
        if len(request["messages"]) == 1:
            return Reply("almost {json", delay=0.3)
        return Reply('{"ok": true}', delay=0.3)

    with FakeLLM(script) as server:
        result = run_map(
            server, "--prompt", "{word}", "--output-format", "json", "-j", "30",
            stdin=repeated(30, 1),
        )  # fmt: skip
        assert result.status == 0
        assert len(server.requests) == 2
    assert all(r["result"] == {"ok": True} for r in result.records)


def test_a_cancelled_request_is_sent_again_by_one_that_waited() -> None:
    async def scenario() -> list[str]:
        sharing = Sharing()
        sent: list[str] = []
        release = asyncio.Event()

        async def send(name: str) -> str:
            sent.append(name)
            await release.wait()
            return f"from {name}"

        first = asyncio.create_task(sharing.once("k", lambda: send("first")))
        await asyncio.sleep(0)
        second = asyncio.create_task(sharing.once("k", lambda: send("second")))
        third = asyncio.create_task(sharing.once("k", lambda: send("third")))
        await asyncio.sleep(0)
        first.cancel()
        await asyncio.sleep(0.01)
        release.set()
        outcomes = await asyncio.gather(second, third)
        assert first.cancelled()
        assert outcomes == [("from second", False), ("from second", True)]
        assert sharing.flights == {} and sharing.shared == 1
        return sent

    assert asyncio.run(scenario()) == ["first", "second"]


def test_a_sharer_cancelled_leaves_the_request_it_waited_for_running() -> None:
    async def scenario() -> None:
        sharing = Sharing()
        release = asyncio.Event()

        async def send() -> str:
            await release.wait()
            return "answer"

        first = asyncio.create_task(sharing.once("k", send))
        await asyncio.sleep(0)
        second = asyncio.create_task(sharing.once("k", send))
        await asyncio.sleep(0)
        second.cancel()
        await asyncio.sleep(0)
        release.set()
        assert await first == ("answer", False)
        assert second.cancelled()

    asyncio.run(scenario())


@pytest.mark.parametrize("seed", range(6))
def test_sharing_changes_no_records_outcome(seed: int, tmp_path: Path) -> None:
    """A seeded campaign: records with repeated questions against a server that answers some
    questions with 429s first, refuses some (400), and answers some with invalid JSON before
    valid JSON. With sharing, with sharing and a cache, and with --no-dedup, every ID comes
    out once with the same outcome; sharing never sends more than --no-dedup."""
    chooser = random.Random(seed)
    distinct = chooser.randrange(3, 30)
    count = chooser.randrange(40, 160)
    jobs = str(chooser.choice([1, 4, 16, 64]))
    kinds = {f"w{n}": chooser.choice(["ok", "ok", "429", "400", "reask"]) for n in range(distinct)}
    limited: dict[str, int] = {}

    def script(request: dict[str, Any], number: int) -> Reply:
        question = request["messages"][0]["content"]
        kind = kinds[question.split()[-1]]
        delay = 0.02
        if kind == "429":
            tries = limited[question] = limited.get(question, 0) + 1
            if tries % 3 == 1:
                return Reply("slow down", status=429, headers={"Retry-After": "0"}, delay=delay)
        if kind == "400":
            return Reply("no", status=400, delay=delay)
        if kind == "reask" and len(request["messages"]) == 1:
            return Reply("{not json", delay=delay)
        return Reply(orjson.dumps({"q": question}).decode(), delay=delay)

    stdin = repeated(count, distinct, seed)
    # Fewer than 25 refused records: a rerun answers the others from the cache at once, so its
    # refusals come in a row, and 25 of one type in a row stop a run (the circuit breaker).
    words = [orjson.loads(line)["word"] for line in stdin.splitlines()]
    for word in sorted(kinds):
        if sum(kinds[w] == "400" for w in words) < 25:
            break
        if kinds[word] == "400":
            kinds[word] = "ok"
    outcomes: list[dict[Any, Any]] = []
    sent: list[int] = []
    cache = ["--cache", str(tmp_path / f"c{seed}.sqlite")]
    # the last run: the same cache again, mostly answered from it, in input order or not
    ordered = ["--keep-order"] if chooser.random() < 0.5 else []
    for extra in (["--no-dedup"], [], cache, [*cache, *ordered]):
        limited.clear()
        with FakeLLM(script) as server:
            result = run_map(
                server, "--prompt", "Q {word}", "--output-format", "json", "-j", jobs,
                "--retry-delay", "0", "--max-reasks", "1", *extra, stdin=stdin,
            )  # fmt: skip
            sent.append(len(server.requests))
        assert result.status in (0, 3)
        records = result.records
        assert sorted(r["_id"] for r in records) == list(range(1, count + 1))
        if "--keep-order" in extra:
            assert [r["_id"] for r in records] == list(range(1, count + 1))
        outcomes.append(
            {r["_id"]: r["error_type"] if "error_type" in r else r["result"] for r in records}
        )
    assert outcomes[0] == outcomes[1] == outcomes[2] == outcomes[3]
    # the rerun sends only what failed: nothing failed is kept
    assert sent[3] <= sent[2] and (sent[3] == 0) == all(
        not isinstance(outcome, str) for outcome in outcomes[3].values()
    )
    assert sent[1] <= sent[0] and sent[2] <= sent[1]


def test_one_bad_request_shared_by_many_records_does_not_trip_the_circuit_breaker() -> None:
    """Twenty records of one bad word: one request fails, and its twenty records with it. That
    is one failure to judge the run by (the breaker trips at five in a row before a success)."""

    def script(request: dict[str, Any], number: int) -> Reply:
        return Reply("this request is wrong", status=400, delay=0.2)

    stdin = jsonl(*({"_id": n, "word": "bad"} for n in range(1, 21)))
    with FakeLLM(script) as server:
        result = run_map(server, "--prompt", "{word}", "-j", "20", stdin=stdin)
        assert len(server.requests) == 1
    assert result.status == 3, result.stderr
    assert len(result.records) == 20
    assert {record["error_type"] for record in result.records} == {"bad_request"}
