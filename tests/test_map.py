"""agents-map against a scripted fake server: every kind of error, with its exit status."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import Result, jsonl
from fake_llm import FakeLLM, Reply, echo, last_user_message

from agents.cli import map as map_cli
from agents.cli._run import Streams

KEY = "sk-test-0123456789abcdef-secret"


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


class Sleeps:
    """Stands in for asyncio.sleep: records each wait and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def run_map(
    server: FakeLLM, *args: str, stdin: bytes, sleeps: Sleeps | None = None, quiet: bool = True
) -> Result:
    """agents-map in-process against ``server``; quiet (no summary) unless asked."""
    out, err = io.BytesIO(), io.StringIO()
    streams = Streams(stdin=io.BytesIO(stdin), stdout=out, stderr=err)
    argv = ["--base-url", server.url, *(["-q"] if quiet else []), *args]
    status = map_cli.main(argv, streams, sleep=sleeps or Sleeps())
    return Result(status, out.getvalue(), err.getvalue())


def words(count: int) -> bytes:
    return jsonl(*({"_id": number, "word": f"w{number}"} for number in range(1, count + 1)))


@pytest.fixture
def server() -> Iterator[FakeLLM]:
    with FakeLLM() as fake:
        yield fake


def scripted(script: Any) -> FakeLLM:
    return FakeLLM(script)


def test_results_extend_records_with_usage_of_the_template(server: FakeLLM) -> None:
    result = run_map(server, "--prompt", "Say {word}", "-j", "4", stdin=words(20))
    assert (result.status, result.stderr) == (0, "")
    records = sorted(result.records, key=lambda r: r["_id"])  # type: ignore[arg-type, return-value]
    assert records[0] == {"_id": 1, "word": "w1", "result": "answer: Say w1"}
    assert len(records) == 20
    assert sorted(server.prompts) == sorted(f"Say w{n}" for n in range(1, 21))
    assert server.headers[0]["Authorization"] == f"Bearer {KEY}"


def test_request_carries_every_parameter(server: FakeLLM, tmp: Path) -> None:
    (tmp / "p.txt").write_text("Word: {word}\n")
    result = run_map(
        server,
        "-p",
        str(tmp / "p.txt"),
        "--system",
        "You answer about {word}.",
        "-m",
        "tiny",
        "--temperature",
        "0.2",
        "--max-tokens",
        "7",
        "--seed",
        "42",
        "--param",
        "top_p=0.5",
        "--param",
        'stop=["\\n"]',
        "-H",
        "X-Team: blue",
        "--max-completion-tokens",
        "9",
        stdin=words(1),
    )
    assert result.status == 0, result.stderr
    request = server.requests[0]
    assert request == {
        "model": "tiny",
        "messages": [
            {"role": "system", "content": "You answer about w1."},
            {"role": "user", "content": "Word: w1\n"},
        ],
        "temperature": 0.2,
        "max_tokens": 7,
        "max_completion_tokens": 9,
        "seed": 42,
        "top_p": 0.5,
        "stop": ["\n"],
    }
    assert server.headers[0]["X-Team"] == "blue"


def test_429_waits_at_least_retry_after_on_every_attempt() -> None:
    def script(request: dict[str, Any], number: int) -> Reply:
        if number < 2:
            return Reply("slow down", status=429, headers={"Retry-After": "7"})
        if number == 2:
            return Reply("slow down", status=429, headers={"retry-after-ms": "12500"})
        return echo(request, number)

    sleeps = Sleeps()
    with scripted(script) as server:
        result = run_map(
            server,
            "--prompt",
            "{word}",
            "-j",
            "1",
            "--max-retries",
            "5",
            "--retry-delay",
            "0.01",
            stdin=words(1),
            sleeps=sleeps,
        )
    assert result.status == 0, result.stderr
    assert len(sleeps.waits) == 3
    # as given, plus at most 5 % of it (a quarter of a second at most) of jitter
    assert 7 <= sleeps.waits[0] <= 7.25 and 7 <= sleeps.waits[1] <= 7.25
    assert 12.5 <= sleeps.waits[2] <= 12.75


def test_ratelimit_reset_headers_are_honoured() -> None:
    def script(request: dict[str, Any], number: int) -> Reply:
        if number == 0:
            return Reply(
                "limit",
                status=429,
                headers={"x-ratelimit-reset-requests": "1m30s", "x-ratelimit-reset-tokens": "20ms"},
            )
        return echo(request, number)

    sleeps = Sleeps()
    with scripted(script) as server:
        assert run_map(server, "--prompt", "{word}", stdin=words(1), sleeps=sleeps).status == 0
    assert sleeps.waits[0] >= 90


@pytest.mark.parametrize("status", [500, 503, 408, 409])
def test_server_errors_then_success(status: int) -> None:
    def script(request: dict[str, Any], number: int) -> Reply:
        return Reply("boom", status=status) if number < 2 else echo(request, number)

    sleeps = Sleeps()
    with scripted(script) as server:
        result = run_map(server, "--prompt", "{word}", stdin=words(1), sleeps=sleeps)
    assert result.status == 0
    assert result.records == [{"_id": 1, "word": "w1", "result": "answer: w1"}]
    assert len(sleeps.waits) == 2 and sleeps.waits[1] > sleeps.waits[0] * 0.9


@pytest.mark.parametrize("action", ["drop", "truncate"])
def test_dropped_or_truncated_then_success(action: str) -> None:
    def script(request: dict[str, Any], number: int) -> Reply:
        return Reply(action=action) if number == 0 else echo(request, number)

    with scripted(script) as server:
        result = run_map(server, "--prompt", "{word}", stdin=words(1))
    assert result.status == 0, result.stderr
    assert result.records[0]["result"] == "answer: w1"


def test_hang_past_timeout_is_retried_then_recorded() -> None:
    with scripted(lambda request, number: Reply(action="hang")) as server:
        result = run_map(
            server, "--prompt", "{word}", "--timeout", "0.3", "--max-retries", "1", stdin=words(1)
        )
    assert result.status == 3
    assert result.records == [
        {
            "_id": 1,
            "error": "no answer within 0.3s",
            "error_type": "timeout",
            "attempts": 2,
            "item": {"_id": 1, "word": "w1"},
        }
    ]
    assert len(server.requests) == 2


def test_retries_exhausted_become_an_error_record() -> None:
    sleeps = Sleeps()
    with scripted(lambda request, number: Reply("down", status=502)) as server:
        result = run_map(
            server, "--prompt", "{word}", "--max-retries", "2", stdin=words(1), sleeps=sleeps
        )
    assert result.status == 3
    assert result.records[0]["error_type"] == "server_error"
    assert result.records[0]["attempts"] == 3
    assert result.stderr == (
        "agents-map: warning: 1 of 1 records failed (server_error: 1); "
        "their error records are in the output\n"
    )


def test_invalid_json_is_reasked_and_fences_are_accepted() -> None:
    def script(request: dict[str, Any], number: int) -> Reply:
        prompt = request["messages"][0]["content"]
        if prompt == "w1":
            return Reply('Sure! ```json\n{"v": 1}\n```')
        if len(request["messages"]) == 1:
            return Reply("not json at all")
        return Reply('Here it is: {"v": 2} hope that helps')

    with scripted(script) as server:
        result = run_map(
            server, "--prompt", "{word}", "--output-format", "json", "-j", "1", stdin=words(2)
        )
    assert result.status == 0, result.stderr
    assert [r["result"] for r in result.records] == [{"v": 1}, {"v": 2}]
    assert server.prompts["w1"] == 1  # the fenced answer needed no re-ask
    reask = server.requests[-1]["messages"]
    assert [m["role"] for m in reask] == ["user", "assistant", "user"]
    assert "could not be used" in reask[2]["content"]


def test_schema_invalid_after_reasks_is_an_error_record(tmp: Path) -> None:
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}
    (tmp / "s.json").write_bytes(orjson.dumps(schema))
    with scripted(lambda request, number: Reply('{"age": "old"}')) as server:
        result = run_map(
            server,
            "--prompt",
            "{word}",
            "--output-format",
            "structured",
            "--schema",
            str(tmp / "s.json"),
            "--max-reasks",
            "1",
            stdin=words(1),
        )
    assert result.status == 3
    record = result.records[0]
    assert (record["error_type"], record["error"]) == (
        "schema_invalid",
        "age: 'old' is not of type 'integer'",
    )
    assert record["attempts"] == 2
    assert server.requests[0]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "result", "schema": schema},
    }


def test_structured_merge_update_and_replace(tmp: Path) -> None:
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}}
    (tmp / "s.json").write_bytes(orjson.dumps(schema))
    with scripted(lambda request, number: Reply('{"age": 30}')) as server:
        common = (
            "--prompt",
            "{word}",
            "--output-format",
            "structured",
            "--schema",
            str(tmp / "s.json"),
        )
        update = run_map(server, *common, "--merge", "update", stdin=words(1))
        replace = run_map(server, *common, "--merge", "replace", "--field", "info", stdin=words(1))
    assert update.records == [{"_id": 1, "word": "w1", "age": 30}]
    assert replace.records == [{"_id": 1, "info": {"age": 30}}]


def test_server_rejecting_response_format_is_detected_once(tmp: Path) -> None:
    (tmp / "s.json").write_text('{"type": "object"}')

    def script(request: dict[str, Any], number: int) -> Reply:
        if "response_format" in request:
            return Reply("response_format is not supported", status=400)
        return Reply('{"ok": true}')

    with scripted(script) as server:
        result = run_map(
            server,
            "--prompt",
            "{word}",
            "--output-format",
            "structured",
            "--schema",
            str(tmp / "s.json"),
            "-j",
            "1",
            stdin=words(3),
        )
    assert result.status == 0, result.stderr
    assert [r["result"] for r in result.records] == [{"ok": True}] * 3
    assert result.stderr.count("does not accept response_format") == 1
    assert sum("response_format" in r for r in server.requests) == 2  # both forms, once


@pytest.mark.parametrize(
    ("reply", "error_type"),
    [
        (Reply("cut", finish_reason="length"), "truncated"),
        (Reply(None, refusal="I can't help with that"), "refusal"),
        (Reply("   "), "empty_response"),
        (Reply("x", finish_reason="content_filter"), "refusal"),
    ],
)
def test_unusable_answers_have_their_own_types(reply: Reply, error_type: str) -> None:
    with scripted(lambda request, number: reply) as server:
        result = run_map(server, "--prompt", "{word}", stdin=words(1))
    assert result.status == 3
    assert result.records[0]["error_type"] == error_type
    assert len(server.requests) == 1


@pytest.mark.parametrize(("status", "kind"), [(401, "auth"), (403, "auth"), (404, "not_found")])
def test_fatal_errors_stop_at_once_keeping_results(status: int, kind: str) -> None:
    def script(request: dict[str, Any], number: int) -> Reply:
        if number < 2:
            return echo(request, number)
        return Reply(
            f"Incorrect API key provided: {KEY}"
            if status != 404
            else "The model `nope` does not exist",
            status=status,
        )

    with scripted(script) as server:
        result = run_map(server, "--prompt", "{word}", "-j", "1", stdin=words(10))
    assert result.status == 1
    assert [r["_id"] for r in result.records] == [1, 2]
    assert len(server.requests) == 3
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"agents-map: error: HTTP {status}: ")
    assert lines[1] == "agents-map: stopped: 2 results and 0 error records were written before it"
    assert KEY not in result.stderr


def test_a_bad_request_for_one_record_only() -> None:
    def script(request: dict[str, Any], number: int) -> Reply:
        if last_user_message(request) == "w3":
            return Reply("This model's maximum context length is 10 tokens", status=400)
        return echo(request, number)

    with scripted(script) as server:
        result = run_map(server, "--prompt", "{word}", stdin=words(6))
    assert result.status == 3
    failed = [r for r in result.records if "error" in r]
    assert len(result.records) == 6 and len(failed) == 1
    assert failed[0]["error_type"] == "context_too_long"
    assert failed[0]["item"] == {"_id": 3, "word": "w3"}


def test_circuit_breaker_stops_a_run_where_every_request_is_bad() -> None:
    with scripted(lambda request, number: Reply("unknown parameter 'x'", status=400)) as server:
        result = run_map(server, "--prompt", "{word}", "-j", "2", stdin=words(200))
    assert result.status == 1
    assert len(server.requests) <= 10
    assert "records in a row failed with bad_request" in result.stderr


def test_unreachable_endpoint_stops_at_once() -> None:
    out, err = io.BytesIO(), io.StringIO()
    streams = Streams(stdin=io.BytesIO(words(100)), stdout=out, stderr=err)
    status = map_cli.main(
        ["--base-url", "http://127.0.0.1:9/v1", "--prompt", "{word}", "-q"],
        streams,
        sleep=Sleeps(),
    )
    assert status == 1
    assert err.getvalue().startswith("agents-map: error: cannot reach http://127.0.0.1:9/v1: ")
    assert out.getvalue() == b""


def test_concurrency_reaches_exactly_jobs() -> None:
    with scripted(lambda request, number: Reply("x", delay=0.05)) as server:
        result = run_map(server, "--prompt", "{word}", "-j", "8", stdin=words(48))
    assert result.status == 0
    assert server.max_in_flight == 8
    with scripted(lambda request, number: Reply("x", delay=0.01)) as server:
        run_map(server, "--prompt", "{word}", "-j", "1", stdin=words(5))
    assert server.max_in_flight == 1


def test_keep_order_and_completion_order() -> None:
    def script(request: dict[str, Any], number: int) -> Reply:
        word = last_user_message(request)
        return Reply(word, delay=0.3 if word == "w1" else 0.0)  # the first record is the slowest

    with scripted(script) as server:
        completion = run_map(server, "--prompt", "{word}", "-j", "4", stdin=words(8))
        ordered = run_map(server, "--prompt", "{word}", "-j", "4", "-k", stdin=words(8))
    assert [r["_id"] for r in ordered.records] == list(range(1, 9))
    assert [r["_id"] for r in completion.records][-1] == 1
    assert sorted(r["_id"] for r in completion.records) == list(range(1, 9))  # type: ignore[type-var]


def test_missing_fields_are_all_named(server: FakeLLM) -> None:
    result = run_map(server, "--prompt", "{wrod} {word} {lang}", stdin=words(1))
    assert result.status == 3
    assert result.records[0]["error"] == "the record has no fields wrod, lang; did you mean {word}?"
    assert result.records[0]["error_type"] == "missing_fields"
    assert server.requests == []


def test_records_without_ids_get_content_hashes(server: FakeLLM) -> None:
    result = run_map(server, "--prompt", "{w}", stdin=jsonl({"w": "a"}, {"w": "b"}, {"w": "a"}))
    ids = [r["_id"] for r in result.records]
    assert len(set(ids)) == 2 and all(isinstance(i, str) and len(i) == 16 for i in ids)
    assert result.stderr.startswith(
        "agents-map: warning: 3 records had no _id; each got one "
        "from a hash of its content (1 were duplicates and share an ID)"
    )


def test_errors_file_takes_the_error_records(server: FakeLLM, tmp: Path) -> None:
    errors = tmp / "errors.jsonl"
    result = run_map(server, "--prompt", "{word} {nope}", "--errors", str(errors), stdin=words(2))
    assert result.status == 3 and result.stdout == b""
    assert len(errors.read_text().splitlines()) == 2


def test_no_key_and_no_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    err = io.StringIO()
    status = map_cli.main(
        ["--prompt", "{w}"], Streams(stdin=io.BytesIO(b""), stdout=io.BytesIO(), stderr=err)
    )
    assert status == 2
    assert err.getvalue() == (
        "agents-map: error: no API key and no endpoint: $OPENAI_API_KEY is not set and no "
        "--base-url was given\n"
        "  hint: set OPENAI_API_KEY for OpenAI, or point --base-url (or OPENAI_BASE_URL) at an "
        "OpenAI-compatible server, such as the local model (see the README)\n"
    )


def test_keyless_local_server_and_named_key_variable(
    server: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    assert run_map(server, "--prompt", "{word}", stdin=words(1)).status == 0
    assert "Authorization" not in server.headers[-1]
    monkeypatch.setenv("MY_KEY", "other-key-123")
    assert (
        run_map(server, "--prompt", "{word}", "--api-key-env", "MY_KEY", stdin=words(1)).status == 0
    )
    assert server.headers[-1]["Authorization"] == "Bearer other-key-123"


def test_proxy_from_the_environment(server: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.port}")
    out, err = io.BytesIO(), io.StringIO()
    streams = Streams(stdin=io.BytesIO(words(1)), stdout=out, stderr=err)
    status = map_cli.main(
        ["--base-url", "http://llm.example.invalid/v1", "--prompt", "{word}"],
        streams,
        sleep=Sleeps(),
    )
    assert status == 0, err.getvalue()
    assert len(server.requests) == 1


def test_the_key_appears_nowhere(tmp: Path) -> None:
    def script(request: dict[str, Any], number: int) -> Reply:
        if number % 2:
            return Reply(f"bad request, your key {KEY} is fine though", status=400)
        return echo(request, number)

    with scripted(script) as server:
        result = run_map(server, "--prompt", "{word}", "-j", "1", stdin=words(4))
    assert result.status == 3
    assert KEY not in result.stdout.decode() and KEY not in result.stderr
    assert any("[redacted]" in str(r.get("error")) for r in result.records)


def test_usage_errors() -> None:
    with scripted(echo) as server:
        assert run_map(server, stdin=b"").status == 2
        assert run_map(server, "--prompt", "x", "-j", "0", stdin=b"").status == 2
        bad = run_map(server, "--prompt", "x", "--output-format", "structured", stdin=b"")
        assert bad.stderr == "agents-map: error: --output-format structured needs --schema FILE\n"
        assert run_map(server, "--prompt", "x", "--param", "top_p", stdin=b"").status == 2


def test_backoff_doubles_from_retry_delay() -> None:
    sleeps = Sleeps()
    with scripted(lambda request, number: Reply("down", status=500)) as server:
        run_map(
            server,
            "--prompt",
            "{word}",
            "--max-retries",
            "4",
            "--retry-delay",
            "1",
            stdin=words(1),
            sleeps=sleeps,
        )
    assert len(server.requests) == 5
    steps = [1, 2, 4, 8]  # each wait drawn from its step's top quarter
    assert all(0.75 * step <= wait <= step for step, wait in zip(steps, sleeps.waits, strict=True))


def test_retries_are_numbered_waited_and_counted_until_exhausted(tmp: Path) -> None:
    sleeps = Sleeps()
    log, stats = tmp / "map.log", tmp / "stats.json"
    with scripted(lambda request, number: Reply("down", status=500)) as server:
        result = run_map(
            server,
            "--prompt",
            "{word}",
            "--max-retries",
            "3",
            "--retry-delay",
            "1",
            "--log-level",
            "INFO",
            "--log-file",
            str(log),
            "--stats",
            str(stats),
            stdin=words(1),
            sleeps=sleeps,
        )
    assert result.status == 3
    assert len(server.requests) == 4
    assert (result.records[0]["error_type"], result.records[0]["attempts"]) == ("server_error", 4)
    assert all(
        0.75 * step <= wait <= step for step, wait in zip([1, 2, 4], sleeps.waits, strict=True)
    )
    retries = [
        line.split(" INFO ", 1)[1] for line in log.read_text().splitlines() if " retry " in line
    ]
    assert retries == [
        f"retry {number} after server_error: HTTP 500: down; waiting {wait:.2f}s"
        for number, wait in zip([2, 3, 4], sleeps.waits, strict=True)
    ]
    assert orjson.loads(stats.read_bytes())["retries"] == {"server_error": 3}


def test_no_retries_means_one_attempt(tmp: Path) -> None:
    sleeps = Sleeps()
    stats = tmp / "stats.json"
    with scripted(lambda request, number: Reply("down", status=500)) as server:
        result = run_map(
            server,
            "--prompt",
            "{word}",
            "--max-retries",
            "0",
            "--stats",
            str(stats),
            stdin=words(1),
            sleeps=sleeps,
        )
    assert result.status == 3
    assert (len(server.requests), result.records[0]["attempts"], sleeps.waits) == (1, 1, [])
    assert orjson.loads(stats.read_bytes())["retries"] == {}


def test_an_unexpected_failure_becomes_an_error_record(
    server: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agents.map.answer import Merger

    original = Merger.merge

    def merge(self: Merger, record: dict[str, Any], result: Any) -> dict[str, Any]:
        if record["word"] == "w2":
            raise RuntimeError("a bug")
        return original(self, record, result)

    monkeypatch.setattr(Merger, "merge", merge)
    result = run_map(server, "--prompt", "{word}", stdin=words(3))
    assert result.status == 3
    failed = [r for r in result.records if "error" in r]
    assert failed == [
        {
            "_id": 2,
            "error": "internal error: RuntimeError('a bug')",
            "error_type": "internal_error",
            "attempts": 1,
            "item": {"_id": 2, "word": "w2"},
        }
    ]


def test_a_bad_input_line_is_named_skipped_and_counted(server: FakeLLM) -> None:
    stdin = words(1) + b"not json\n" + jsonl({"_id": 3, "word": "w3"})
    result = run_map(server, "--prompt", "{word}", stdin=stdin)
    assert result.status == 3
    assert sorted(r["_id"] for r in result.records) == [1, 3]  # type: ignore[type-var]
    lines = result.stderr.splitlines()
    assert lines[0].startswith("agents-map: warning: <stdin>:2: invalid JSON")
    assert lines[-1] == ("agents-map: warning: skipped 1 bad input line")


def test_empty_input(server: FakeLLM) -> None:
    result = run_map(server, "--prompt", "{word}", stdin=b"")
    assert (result.status, result.stdout, result.stderr) == (0, b"", "")


def test_a_retry_after_of_0_backs_off_and_a_long_one_is_said() -> None:
    def script(request: dict[str, Any], number: int) -> Reply:
        if number == 0:
            return Reply("slow down", status=429, headers={"Retry-After": "0"})
        if number == 1:
            return Reply("quota", status=429, headers={"Retry-After": "3600"})
        return echo(request, number)

    sleeps = Sleeps()
    with scripted(script) as server:
        result = run_map(
            server, "--prompt", "{word}", "--max-retries", "3", stdin=words(1), sleeps=sleeps
        )
    assert result.status == 0, result.stderr
    assert 0.375 <= sleeps.waits[0] <= 0.5  # the first backoff step, not an instant retry
    assert 3600 <= sleeps.waits[1] <= 3600.25
    assert result.stderr == (
        "agents-map: warning: the server asks to wait 1h 0m before a retry (Retry-After); "
        "waiting: Ctrl-C stops the run, and the same command run later resumes it\n"
    )
