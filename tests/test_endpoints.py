"""Several endpoints for one job (--endpoint): the split by weight, jobs= per endpoint, a
server that dies and comes back, a bad key, and the run stopping only when none is left.

The servers are the fake of the test suite (faults and timing: a real server cannot be told to
die at request 60); two real local models sharing a job are in test_local.py.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import Result, jsonl
from fake_llm import FakeLLM, Reply, echo

from agents.cli import map as map_cli
from agents.cli._run import Streams

KEY = "sk-test-endpoints-0123456789"


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_BASE_URL", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


class Sleeps:
    """Backoff waits return at once."""

    async def __call__(self, seconds: float) -> None:
        return None


def words(count: int) -> bytes:
    return jsonl(*({"_id": number, "word": f"w{number}"} for number in range(1, count + 1)))


def run(*args: str, stdin: bytes, stats: Path | None = None) -> tuple[Result, dict[str, Any]]:
    out, err = io.BytesIO(), io.StringIO()
    argv = ["--prompt", "{word}", "--price", "1,2", *args]
    if stats is not None:
        argv += ["--stats", str(stats)]
    status = map_cli.main(
        argv, Streams(stdin=io.BytesIO(stdin), stdout=out, stderr=err), sleep=Sleeps()
    )
    document = orjson.loads(stats.read_bytes()) if stats is not None and stats.exists() else {}
    return Result(status, out.getvalue(), err.getvalue()), document


def results(result: Result) -> dict[Any, dict[str, Any]]:
    records = [orjson.loads(line) for line in result.stdout.splitlines()]
    by_id = {record["_id"]: record for record in records}
    assert len(by_id) == len(records), "an ID written twice"
    return by_id


def slow(seconds: float) -> Callable[[dict[str, Any], int], Reply]:
    def script(request: dict[str, Any], number: int) -> Reply:
        reply = echo(request, number)
        reply.delay = seconds
        return reply

    return script


def test_requests_split_by_weight(tmp_path: Path) -> None:
    with FakeLLM(slow(0.005)) as a, FakeLLM(slow(0.005)) as b, FakeLLM(slow(0.005)) as c:
        result, stats = run(
            "--endpoint", a.url,
            "--endpoint", f"{b.url} weight=1",
            "--endpoint", f"{c.url} weight=2",
            "-j", "12",
            stdin=words(800),
            stats=tmp_path / "stats.json",
        )  # fmt: skip
        counts = [len(a.requests), len(b.requests), len(c.requests)]
    assert result.status == 0, result.stderr
    assert len(results(result)) == 800
    assert sum(counts) == 800
    for count, share in zip(counts, (0.25, 0.25, 0.5), strict=True):
        assert abs(count / 800 - share) < 0.03, counts
    assert [entry["requests"] for entry in stats["endpoints"]] == counts
    assert stats["requests"] == 800
    assert round(sum(entry["cost_usd"] for entry in stats["endpoints"]), 6) == stats["cost_usd"]


def test_a_slow_endpoint_gets_fewer_requests_and_the_fast_one_the_rest() -> None:
    """A server 200 times slower than the other, the same weight: its requests stay in flight,
    so it is given fewer, and the job's -j slots keep the fast one busy (it used to get every
    other request, and the job went at the slow one's pace)."""
    with FakeLLM(slow(1.0)) as slow_one, FakeLLM(slow(0.005)) as fast_one:
        began = time.monotonic()
        result, _ = run(
            "--endpoint", slow_one.url, "--endpoint", fast_one.url, "-j", "8",
            stdin=words(400),
        )  # fmt: skip
        took = time.monotonic() - began
        slow_count = len(slow_one.requests)
    assert result.status == 0, result.stderr
    assert len(results(result)) == 400
    # at one request in flight there, a second each: about as many as the run lasts seconds
    assert slow_count <= 2 * took + 8, (slow_count, took)


def test_a_429_pauses_that_endpoint_and_its_requests_go_to_the_other() -> None:
    """An endpoint that answers 429 with Retry-After: 30 to everything: its requests are sent to
    the other at once (no waiting 30 s), and it is not asked again during the pause."""

    def storm(request: dict[str, Any], number: int) -> Reply:
        return Reply("slow down", status=429, headers={"Retry-After": "30"})

    with FakeLLM(storm) as limited, FakeLLM() as good:
        began = time.monotonic()
        out, err = io.BytesIO(), io.StringIO()
        status = map_cli.main(
            ["--prompt", "{word}", "--endpoint", limited.url, "--endpoint", good.url, "-j", "4"],
            Streams(stdin=io.BytesIO(words(100)), stdout=out, stderr=err),
            sleep=asyncio.sleep,  # (real waits: a 30 s one would show)
        )  # fmt: skip
        took = time.monotonic() - began
        assert len(limited.requests) <= 4  # those in flight when the first 429 came
        assert len(good.requests) == 100
    assert status == 0, err.getvalue()
    assert took < 15
    by_id = results(Result(status, out.getvalue(), err.getvalue()))
    assert all(record.get("attempts", 1) == 1 for record in by_id.values())


def test_jobs_caps_each_endpoint_and_the_others_take_the_rest() -> None:
    with FakeLLM(slow(0.02)) as small, FakeLLM(slow(0.02)) as large:
        result, _ = run(
            "--endpoint", f"{small.url} jobs=2 weight=5",
            "--endpoint", large.url,
            "-j", "12",
            stdin=words(200),
        )  # fmt: skip
        assert result.status == 0, result.stderr
        assert small.max_in_flight <= 2
        assert large.max_in_flight <= 12
        # weight 5 cannot be honoured with 2 slots: the other endpoint takes what it cannot
        assert len(large.requests) > len(small.requests)
    assert len(results(result)) == 200


def test_a_server_that_dies_gets_only_probes_and_is_used_again_when_it_returns(
    tmp_path: Path,
) -> None:
    """One of three servers stops at its 40th request and comes back 1.5 s later: every record
    succeeds, the dead one costs its requests in flight and a probe or two, and it answers
    again after its return."""
    holder: dict[str, Any] = {}
    killed = threading.Event()

    def dying(request: dict[str, Any], number: int) -> Reply:
        if number == 40 and not killed.is_set():
            killed.set()
            threading.Thread(target=holder["dying"].__exit__, args=(None, None, None)).start()
        reply = echo(request, number)
        reply.delay = 0.03
        return reply

    with FakeLLM(slow(0.03)) as a, FakeLLM(slow(0.03)) as b:
        dying_server = FakeLLM(dying)
        holder["dying"] = dying_server.__enter__()
        port = dying_server.port
        back: dict[str, FakeLLM] = {}

        def come_back() -> None:
            assert killed.wait(30)
            time.sleep(1.5)
            back["server"] = FakeLLM(slow(0.03), port=port).__enter__()

        returning = threading.Thread(target=come_back)
        returning.start()
        try:
            result, stats = run(
                "--endpoint", a.url,
                "--endpoint", b.url,
                "--endpoint", dying_server.url,
                "-j", "9",
                stdin=words(1200),
                stats=tmp_path / "stats.json",
            )  # fmt: skip
        finally:
            returning.join(30)
        assert "server" in back
        returned = len(back["server"].requests)
        back["server"].__exit__(None, None, None)
    assert result.status == 0, result.stderr
    by_id = results(result)
    assert len(by_id) == 1200 and all("error" not in record for record in by_id.values())
    dead = stats["endpoints"][2]
    # its requests in flight when it died (at most its share of -j 9), then a probe or two
    assert sum(dead["errors"].values()) <= 9 + 3, dead
    assert returned >= 10, "the server that came back was not used again"
    assert "answers again" in result.stderr


def test_an_endpoint_with_a_bad_key_is_disabled_and_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTHER_KEY", "sk-wrong-key-for-this-one")

    def checks_key(request: dict[str, Any], number: int) -> Reply:
        return Reply("Incorrect API key provided", status=401)

    with FakeLLM(checks_key) as locked, FakeLLM() as good:
        result, _ = run(
            "--endpoint", f"{locked.url} key-env=OTHER_KEY",
            "--endpoint", good.url,
            "-j", "4",
            stdin=words(50),
        )  # fmt: skip
        assert len(locked.requests) <= 4  # at most the requests in flight when it first said so
        assert len(good.requests) == 50
        assert locked.headers[0]["Authorization"] == "Bearer sk-wrong-key-for-this-one"
        assert good.headers[0]["Authorization"] == f"Bearer {KEY}"
    assert result.status == 0, result.stderr
    assert len(results(result)) == 50
    assert f"endpoint {locked.url} is disabled for this run" in result.stderr
    assert "sk-wrong-key-for-this-one" not in result.stderr


def test_every_endpoint_disabled_stops_the_run() -> None:
    def refuses(request: dict[str, Any], number: int) -> Reply:
        return Reply("Incorrect API key provided", status=401)

    with FakeLLM(refuses) as one, FakeLLM(refuses) as two:
        result, _ = run("--endpoint", one.url, "--endpoint", two.url, stdin=words(20))
    assert result.status == 1
    assert "every endpoint is disabled" in result.stderr
    assert one.url in result.stderr and two.url in result.stderr


def test_no_endpoint_reachable_at_the_start_stops_the_run() -> None:
    with FakeLLM() as one, FakeLLM() as two:
        urls = [one.url, two.url]
    result, _ = run("--endpoint", urls[0], "--endpoint", urls[1], stdin=words(5))
    assert result.status == 1
    assert "cannot reach any endpoint" in result.stderr


def test_one_unreachable_endpoint_at_the_start_costs_nothing() -> None:
    with FakeLLM() as gone:
        url = gone.url
    with FakeLLM() as good:
        result, _ = run("--endpoint", url, "--endpoint", good.url, "-j", "4", stdin=words(30))
        assert len(good.requests) == 30
    assert result.status == 0, result.stderr
    by_id = results(result)
    assert all(record.get("attempts", 1) == 1 for record in by_id.values())


def test_each_endpoint_gets_its_own_model_name() -> None:
    with FakeLLM() as one, FakeLLM() as two:
        result, _ = run(
            "-m", "gpt-4o-mini",
            "--endpoint", f"{one.url} model=local-name",
            "--endpoint", two.url,
            "-j", "2",
            stdin=words(10),
        )  # fmt: skip
        assert result.status == 0, result.stderr
        assert {request["model"] for request in one.requests} == {"local-name"}
        assert {request["model"] for request in two.requests} == {"gpt-4o-mini"}


def test_a_job_file_lists_endpoints(tmp_path: Path) -> None:
    with FakeLLM() as one, FakeLLM() as two:
        job = tmp_path / "job.yaml"
        job.write_text(
            "llm:\n  endpoints:\n"
            f"    - {one.url} weight=3\n"
            f"    - url: {two.url}\n      weight: 1\n      jobs: 2\n"
            "prompt: '{word}'\n"
            "processing:\n  concurrency: 4\n"
        )
        out, err = io.BytesIO(), io.StringIO()
        status = map_cli.main(
            ["--config", str(job), "-q"],
            Streams(stdin=io.BytesIO(words(40)), stdout=out, stderr=err),
            sleep=Sleeps(),
        )
        assert status == 0, err.getvalue()
        assert len(one.requests) + len(two.requests) == 40
        assert len(one.requests) >= 1.5 * len(two.requests)  # weight 3 to 1 (not exact: see
        assert two.max_in_flight <= 2  # test_requests_split_by_weight for the split)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--endpoint", "http://127.0.0.1:9/v1", "--base-url", "http://x/v1"], "twice"),
        (["--endpoint", "127.0.0.1:9"], "is not an http(s) URL"),
        (["--endpoint", "http://127.0.0.1:9/v1 wieght=2"], "is not one of weight=..."),
        (["--endpoint", "http://127.0.0.1:9/v1 weight=0"], "weight= must be positive"),
        (["--endpoint", "http://127.0.0.1:9/v1 jobs=1.5"], "jobs= takes a whole number"),
        (["--endpoint", "http://127.0.0.1:9/v1 key-env=$KEY"], "names an environment variable"),
        (["--endpoint", "http://127.0.0.1:9/v1 key-env=UNSET_KEY_VARIABLE"], "is not set"),
        (["--endpoint", "http://127.0.0.1:9/v1", "--endpoint", "http://127.0.0.1:9/v1/"], "more"),
        (["--endpoint", "http://127.0.0.1:9/v1", "--batch"], "Batch API"),
        (["--endpoint", "http://me:secret@127.0.0.1:9/v1"], "user name or password"),
        (["--base-url", "http://me:secret@127.0.0.1:9/v1"], "user name or password"),
        (["--endpoint", "http://127.0.0.1:70000/v1"], "port is not a number"),
        (["--base-url", "http://127.0.0.1:0x1/v1"], "port is not a number"),
        (
            ["--endpoint", "http://127.0.0.1:9/v1 key-env=K"] * 2,
            "more than once with key-env=K",
        ),
    ],
)
def test_bad_endpoints_are_usage_errors(
    args: list[str], says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("K", "sk-k")
    result, _ = run(*args, stdin=words(1))
    assert result.status == 2, result.stderr
    assert says in result.stderr
    assert "Traceback" not in result.stderr and "secret" not in result.stderr


def test_one_server_with_two_keys_is_two_endpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    """Several keys of one provider, each with its own limits: one URL given once per key,
    each request carrying its lane's key, the summary naming each by its key's variable."""
    monkeypatch.setenv("KEY_A", "sk-key-a-0123456789")
    monkeypatch.setenv("KEY_B", "sk-key-b-0123456789")
    with FakeLLM() as server:
        out, err = io.BytesIO(), io.StringIO()
        status = map_cli.main(
            ["--prompt", "{word}", "--endpoint", f"{server.url} key-env=KEY_A",
             "--endpoint", f"{server.url} key-env=KEY_B", "-j", "2"],
            Streams(stdin=io.BytesIO(words(20)), stdout=out, stderr=err),
            sleep=Sleeps(),
        )  # fmt: skip
        keys = sorted(headers["Authorization"] for headers in server.headers)
    assert status == 0, err.getvalue()
    assert keys == ["Bearer sk-key-a-0123456789"] * 10 + ["Bearer sk-key-b-0123456789"] * 10
    assert f"Endpoint {server.url} (key-env=KEY_A): 10 requests" in err.getvalue()
    assert f"Endpoint {server.url} (key-env=KEY_B): 10 requests" in err.getvalue()


def test_a_dry_run_needs_no_key_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UNSET_KEY_VARIABLE", raising=False)
    result, _ = run(
        "-m", "m", "--endpoint", "http://127.0.0.1:9/v1 key-env=UNSET_KEY_VARIABLE",
        "--dry-run", stdin=words(2),
    )  # fmt: skip
    assert result.status == 0, result.stderr


def test_without_a_model_the_first_endpoint_that_answers_names_it() -> None:
    with FakeLLM() as gone:
        url = gone.url
    with FakeLLM(models=["served-model"]) as server:
        result, _ = run("--endpoint", url, "--endpoint", server.url, stdin=words(3))
        assert {request["model"] for request in server.requests} == {"served-model"}
    assert result.status == 0, result.stderr


def test_the_python_api_takes_one_endpoint_or_mappings(monkeypatch: pytest.MonkeyPatch) -> None:
    import agents

    records = [{"_id": number, "word": f"w{number}"} for number in range(6)]
    with FakeLLM() as one, FakeLLM() as two:
        for endpoint in (
            one.url,  # one, as a string (not a list of its characters)
            [{"url": one.url, "weight": 2}, {"url": two.url, "jobs": 1}],  # as in a job file
        ):
            job = agents.Job.create(
                prompt="{word}", model="m", endpoint=endpoint, fallback_model="spare"
            )
            assert job.fallbacks == {"spare": None}
            assert len(list(agents.map_records(records, job))) == 6
        assert len(one.requests) + len(two.requests) == 12 and len(two.requests) >= 1


def test_the_summary_breaks_requests_down_by_endpoint() -> None:
    def fails_some(request: dict[str, Any], number: int) -> Reply:
        return Reply("busy", status=500) if number % 5 == 0 else echo(request, number)

    with FakeLLM(fails_some) as flaky, FakeLLM() as good:
        out, err = io.BytesIO(), io.StringIO()
        status = map_cli.main(
            ["--prompt", "{word}", "--price", "1,2", "--endpoint", flaky.url,
             "--endpoint", good.url, "-j", "2"],
            Streams(stdin=io.BytesIO(words(20)), stdout=out, stderr=err),
            sleep=Sleeps(),
        )  # fmt: skip
    assert status == 0, err.getvalue()
    lines = [line for line in err.getvalue().splitlines() if line.startswith("Endpoint ")]
    assert len(lines) == 2
    assert lines[0].startswith(f"Endpoint {flaky.url}: ") and "server_error" in lines[0]
    assert lines[1].startswith(f"Endpoint {good.url}: ") and "0 failed" in lines[1]


def test_each_endpoint_keeps_to_its_own_rate_limit() -> None:
    """Two servers of 600 requests a minute each (20 in any two seconds: see test_rate_limits
    for why two), each given as its rpm=: together they answer twice what one would, neither
    refuses, and the job takes about as long as its half at one server's rate."""
    from fake_llm import Limited

    one, two = (Limited(requests=20, window=2.0, headers=False) for _ in range(2))
    with FakeLLM(one) as first, FakeLLM(two) as second:
        began = time.monotonic()
        result, _ = run(
            "--endpoint", f"{first.url} rpm=600",
            "--endpoint", f"{second.url} rpm=600",
            "-j", "8",
            stdin=words(60),
        )  # fmt: skip
        elapsed = time.monotonic() - began
    assert result.status == 0, result.stderr
    assert one.answered + two.answered == 60
    assert 25 <= one.answered <= 35  # (a lane whose budget has a request waiting is passed by)
    assert one.refused + two.refused <= 1
    assert one.most_requests <= 20 and two.most_requests <= 20
    assert elapsed >= 30 / 10 - 1.0  # each budget, not luck, kept it under (10 a second)


def test_endpoints_on_the_command_line_replace_the_job_files_server(tmp_path: Path) -> None:
    with FakeLLM() as filed, FakeLLM() as flagged:
        job = tmp_path / "job.yaml"
        job.write_text(f"llm:\n  base_url: {filed.url}\n  model: m\nprompt: '{{word}}'\n")
        result, _ = run("--config", str(job), "--endpoint", flagged.url, stdin=words(3))
        assert result.status == 0, result.stderr
        assert len(filed.requests) == 0 and len(flagged.requests) == 3
        listed = tmp_path / "listed.yaml"
        listed.write_text(f"llm:\n  endpoints: [{filed.url}]\n  model: m\nprompt: '{{word}}'\n")
        result, _ = run("--config", str(listed), "--base-url", flagged.url, stdin=words(2))
        assert result.status == 0, result.stderr
        assert len(filed.requests) == 0 and len(flagged.requests) == 5


def test_without_a_model_endpoints_that_all_name_it_give_the_first_name() -> None:
    with FakeLLM(models=["x", "y"]) as one, FakeLLM() as two:
        result, _ = run(
            "--endpoint", f"{one.url} model=foo", "--endpoint", f"{two.url} model=bar",
            stdin=words(4),
        )  # fmt: skip
        assert result.status == 0, result.stderr
        assert {request["model"] for request in one.requests} <= {"foo"}
        assert {request["model"] for request in two.requests} <= {"bar"}
        assert one.model_lists == 0 and two.model_lists == 0  # not asked which they serve


def test_an_empty_fallback_model_is_refused() -> None:
    result, _ = run(
        "-m", "a", "--fallback-model", " ", "--base-url", "http://127.0.0.1:9/v1", stdin=words(1)
    )
    assert result.status == 2 and "empty" in result.stderr


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("weight: '1 jobs=2'", "one value without spaces"),
        ("jobs: true", "expected a single value"),
        ("wieght: 2", "unknown setting"),
    ],
)
def test_a_job_files_endpoint_settings_are_checked_one_by_one(
    tmp_path: Path, entry: str, says: str
) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(
        f"llm:\n  endpoints:\n    - url: http://127.0.0.1:9/v1\n      {entry}\nprompt: x\n"
    )
    result, _ = run("--config", str(job), stdin=words(1))
    assert result.status == 2 and says in result.stderr, result.stderr
