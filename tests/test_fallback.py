"""Fallback models (--fallback-model): tried for a record the model before cannot answer, the
model that answered named under _model, priced per model, and resume skipping what they
answered. The server is the fake of the test suite (a real one cannot be told to refuse one
model and serve another)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import Result, jsonl
from fake_llm import FakeLLM, Reply, last_user_message

from agents.cli import map as map_cli
from agents.cli._run import Streams


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-fallback-0123456789")
    monkeypatch.setenv("AGENTS_RUNTIME_DIR", str(tmp_path / "runtime"))


class Sleeps:
    async def __call__(self, seconds: float) -> None:
        return None


def words(count: int) -> bytes:
    return jsonl(*({"_id": number, "word": f"w{number}"} for number in range(1, count + 1)))


def run(server: FakeLLM, *args: str, stdin: bytes) -> Result:
    out, err = io.BytesIO(), io.StringIO()
    status = map_cli.main(
        ["--base-url", server.url, "--prompt", "{word}", "-q", *args],
        Streams(stdin=io.BytesIO(stdin), stdout=out, stderr=err),
        sleep=Sleeps(),
    )
    return Result(status, out.getvalue(), err.getvalue())


def outputs(result: Result) -> dict[Any, dict[str, Any]]:
    records = [orjson.loads(line) for line in result.stdout.splitlines()]
    by_id = {record["_id"]: record for record in records}
    assert len(by_id) == len(records)
    return by_id


def models(server: FakeLLM) -> list[str]:
    return [request["model"] for request in server.requests]


def test_a_primary_model_the_server_does_not_know_falls_back_for_every_record() -> None:
    def script(request: dict[str, Any], number: int) -> Reply:
        if request["model"] == "big":
            return Reply("The model `big` does not exist", status=404)
        return Reply(f"small: {last_user_message(request)}")

    with FakeLLM(script) as server:
        result = run(server, "-m", "big", "--fallback-model", "small", "-j", "4", stdin=words(30))
        asked = models(server)
    assert result.status == 0, result.stderr
    by_id = outputs(result)
    assert len(by_id) == 30
    assert all(record["_model"] == "small" for record in by_id.values())
    assert all(record["result"].startswith("small: ") for record in by_id.values())
    assert asked.count("big") <= 4  # those in flight when the first 404 came; none after
    assert asked.count("small") == 30
    assert result.stderr.count("the server does not know big") == 1


def test_context_too_long_and_invalid_answers_fall_back_per_record(tmp_path: Path) -> None:
    def script(request: dict[str, Any], number: int) -> Reply:
        word = request["messages"][0]["content"]  # (a re-ask's last message is the re-ask)
        if request["model"] == "primary":
            if word.endswith("3"):
                return Reply("This model's maximum context length is 10 tokens", status=400)
            if word.endswith("7"):
                return Reply("not json at all")  # never valid, re-asks included
            return Reply('{"by": "primary"}')
        return Reply('{"by": "second"}')

    with FakeLLM(script) as server:
        result = run(
            server, "-m", "primary", "--fallback-model", "second", "--output-format", "json",
            "--price", "1,2", "--stats", str(tmp_path / "stats.json"), stdin=words(20),
        )  # fmt: skip
        asked = models(server)
    assert result.status == 0, result.stderr
    by_id = outputs(result)
    for number, record in by_id.items():
        fell_back = str(number).endswith(("3", "7"))
        assert record["_model"] == ("second" if fell_back else "primary")
        assert record["result"] == {"by": record["_model"]}
    # w7 and w17: the first answer and two re-asks of the primary, then the fallback
    assert asked.count("primary") == 20 + 2 * 2
    assert asked.count("second") == 4
    stats = orjson.loads((tmp_path / "stats.json").read_bytes())
    assert set(stats["models"]) == {"primary", "second"}
    # --price is the primary model's; "second" is in no price table
    assert stats["cost_usd"] is None
    assert stats["models"]["primary"]["cost_usd"] is not None


def test_each_model_is_priced_at_its_own_rate(tmp_path: Path) -> None:
    def script(request: dict[str, Any], number: int) -> Reply:
        if request["model"] == "gpt-4o":
            return Reply("busy", status=500)  # retries used up
        return Reply("ok", usage={"prompt_tokens": 1000, "completion_tokens": 1000})

    with FakeLLM(script) as server:
        result = run(
            server, "-m", "gpt-4o", "--fallback-model", "gpt-4o-mini", "--max-retries", "1",
            "--stats", str(tmp_path / "stats.json"), stdin=words(4),
        )  # fmt: skip
        asked = models(server)
    assert result.status == 0, result.stderr
    # each record's two attempts (more when a 500 cut the window: given back), then the fallback
    assert asked.count("gpt-4o") >= 4 * 2 and asked.count("gpt-4o-mini") == 4
    stats = orjson.loads((tmp_path / "stats.json").read_bytes())
    mini = stats["models"]["gpt-4o-mini"]
    assert (mini["input"], mini["output"]) == (4000, 4000)
    assert stats["cost_usd"] == pytest.approx(mini["cost_usd"])
    assert 0 < stats["cost_usd"] < 0.01  # gpt-4o-mini's price, not gpt-4o's
    assert {record["_model"] for record in outputs(result).values()} == {"gpt-4o-mini"}


def test_when_every_model_fails_the_record_is_an_error_with_the_last_models_reason() -> None:
    def script(request: dict[str, Any], number: int) -> Reply:
        if request["model"] == "a":
            return Reply("maximum context length exceeded", status=400)
        return Reply("", finish_reason="stop")  # empty

    with FakeLLM(script) as server:
        result = run(server, "-m", "a", "--fallback-model", "b", stdin=words(3))
    assert result.status == 3
    for record in outputs(result).values():
        assert record["error_type"] == "empty_response"
        assert "_model" not in record


def test_a_failure_no_model_can_fix_does_not_fall_back() -> None:
    def script(request: dict[str, Any], number: int) -> Reply:
        return Reply("invalid parameter", status=400)  # bad_request: the job's, not the model's

    with FakeLLM(script) as server:
        result = run(server, "-m", "a", "--fallback-model", "b", stdin=words(2))
        asked = models(server)
    assert result.status == 3
    assert asked == ["a", "a"]


def test_no_model_known_stops_the_run() -> None:
    with FakeLLM(lambda request, number: Reply("no such model", status=404)) as server:
        result = run(server, "-m", "a", "--fallback-model", "b", "-j", "1", stdin=words(5))
    assert result.status == 1
    assert "the server knows none of the models: a, b" in result.stderr


def test_a_fallback_added_to_finish_a_job_resumes_it(tmp_path: Path) -> None:
    """The primary answers some records; a rerun with a fallback added (the fingerprint is
    the primary's) sends only the failed ones, to the primary then the fallback."""

    def script(request: dict[str, Any], number: int) -> Reply:
        if request["model"] == "main" and last_user_message(request).endswith("5"):
            return Reply("too long: maximum context length", status=400)
        return Reply(f"{request['model']} answer")

    output = tmp_path / "out.jsonl"
    with FakeLLM(script) as server:
        first = run(server, "-m", "main", "--resume", str(output), stdin=words(10))
        assert first.status == 3
        output.write_bytes(first.stdout)
        before = len(server.requests)
        second = run(
            server, "-m", "main", "--fallback-model", "spare", "--resume", str(output),
            stdin=words(10),
        )  # fmt: skip
        again = models(server)[before:]
    assert second.status == 0, second.stderr
    assert again == ["main", "spare"]  # w5 only
    (record,) = outputs(second).values()
    assert (record["_id"], record["_model"], record["result"]) == (5, "spare", "spare answer")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["-m", "a", "--fallback-model", "a"], "named twice"),
        (["-m", "a", "--fallback-model", "b", "--fallback-model", "b"], "named twice"),
        (["-m", "gpt-4o", "--fallback-model", "mystery", "--max-cost", "1"], "none for mystery"),
        (["-m", "a", "--fallback-model", "b", "--batch"], "online mode"),
    ],
)
def test_bad_fallbacks_are_usage_errors(args: list[str], says: str) -> None:
    with FakeLLM() as server:
        result = run(server, *args, stdin=words(1))
        assert server.requests == []
    assert result.status == 2, result.stderr
    assert says in result.stderr


def test_a_job_file_lists_fallbacks(tmp_path: Path) -> None:
    def script(request: dict[str, Any], number: int) -> Reply:
        if request["model"] == "a":
            return Reply("no", status=404)
        return Reply("from " + request["model"])

    job = tmp_path / "job.yaml"
    job.write_text("llm:\n  model: a\n  fallbacks: [b]\nprompt: '{word}'\n")
    with FakeLLM(script) as server:
        result = run(server, "--config", str(job), stdin=words(2))
    assert result.status == 0, result.stderr
    assert {record["_model"] for record in outputs(result).values()} == {"b"}


def test_merge_replace_keeps_the_model_beside_the_id() -> None:
    def script(request: dict[str, Any], number: int) -> Reply:
        if request["model"] == "a":
            return Reply("refused", refusal="I cannot help with that")
        return Reply('{"x": 1}')

    with FakeLLM(script) as server:
        result = run(
            server, "-m", "a", "--fallback-model", "b", "--output-format", "json",
            "--merge", "replace", stdin=words(2),
        )  # fmt: skip
    assert result.status == 0, result.stderr
    assert [orjson.loads(line) for line in sorted(result.stdout.splitlines())] == [
        {"_id": 1, "result": {"x": 1}, "_model": "b"},
        {"_id": 2, "result": {"x": 1}, "_model": "b"},
    ]


# With several endpoints (--endpoint) ------------------------------------------------------------


def run_endpoints(*args: str, stdin: bytes, stats: Path | None = None) -> Result:
    out, err = io.BytesIO(), io.StringIO()
    argv = ["--prompt", "{word}", "-q", *args, *(["--stats", str(stats)] if stats else [])]
    status = map_cli.main(argv, Streams(io.BytesIO(stdin), out, err), sleep=Sleeps())
    return Result(status, out.getvalue(), err.getvalue())


def knows(*names: str) -> Any:
    """A server that serves ``names`` and answers 404 for any other model."""

    def script(request: dict[str, Any], number: int) -> Reply:
        if request["model"] not in names:
            return Reply(f"The model `{request['model']}` does not exist", status=404)
        return Reply(f"{request['model']}: {last_user_message(request)}")

    return script


@pytest.mark.parametrize("wrong", ["model", "path"])
def test_a_404_from_one_endpoint_is_that_endpoints_not_the_models(wrong: str) -> None:
    """One endpoint does not serve the primary (a wrong model= or a wrong URL path): the
    others answer every record with the primary; no record falls back, nothing is lost."""
    with FakeLLM(knows("big", "small")) as good, FakeLLM(knows("small")) as other:
        # another server, asked under a name it does not know; or the good one at a wrong path
        bad = f"{other.url} model=typo" if wrong == "model" else good.url[: -len("/v1")] + "/wrong"
        result = run_endpoints(
            "-m", "big", "--fallback-model", "small", "--endpoint", bad,
            "--endpoint", good.url, "-j", "4", stdin=words(40),
        )  # fmt: skip
    assert result.status == 0, result.stderr
    by_id = outputs(result)
    assert sorted(by_id) == list(range(1, 41))
    assert {record["_model"] for record in by_id.values()} == {"big"}
    assert "does not serve big" in result.stderr
    assert "using small" not in result.stderr


def test_a_model_no_endpoint_serves_falls_back_and_a_lane_serving_none_is_disabled() -> None:
    """Neither endpoint serves the primary: the fallback answers, on the endpoint that serves
    it; the one that serves neither model is disabled."""
    with FakeLLM(knows("small")) as serves_small, FakeLLM(knows()) as serves_none:
        result = run_endpoints(
            "-m", "big", "--fallback-model", "small", "--endpoint", serves_small.url,
            "--endpoint", serves_none.url, "-j", "2", stdin=words(20),
        )  # fmt: skip
        assert {request["model"] for request in serves_small.requests[4:]} == {"small"}
    assert result.status == 0, result.stderr
    assert {record["_model"] for record in outputs(result).values()} == {"small"}
    assert "no endpoint serves big" in result.stderr
    assert f"endpoint {serves_none.url} is disabled" in result.stderr


def test_each_endpoints_cost_prices_each_model_at_its_own_rate(tmp_path: Path) -> None:
    def script(request: dict[str, Any], number: int) -> Reply:
        if request["model"] == "gpt-4o" and last_user_message(request).endswith("1"):
            return Reply("maximum context length exceeded", status=400)
        return Reply("ok", usage={"prompt_tokens": 1000, "completion_tokens": 1000})

    stats = tmp_path / "stats.json"
    with FakeLLM(script) as one, FakeLLM(script) as two:
        result = run_endpoints(
            "-m", "gpt-4o", "--fallback-model", "gpt-4o-mini", "--endpoint", one.url,
            "--endpoint", two.url, "-j", "2", stdin=words(20), stats=stats,
        )  # fmt: skip
    assert result.status == 0, result.stderr
    document = orjson.loads(stats.read_bytes())
    models_cost = {name: figures["cost_usd"] for name, figures in document["models"].items()}
    assert (
        models_cost["gpt-4o-mini"] > 0 and models_cost["gpt-4o"] > 10 * models_cost["gpt-4o-mini"]
    )
    by_endpoint = [endpoint["cost_usd"] for endpoint in document["endpoints"]]
    assert sum(by_endpoint) == pytest.approx(document["cost_usd"])


def test_a_record_whose_fallback_cannot_go_out_keeps_the_paid_failure(tmp_path: Path) -> None:
    """--max-cost leaves no room for the fallback's worst case: every record the primary was
    asked for (and paid) has its output line, the primary's failure with its answer, so none
    is lost with the stop (the run exits 4; a rerun retries them)."""

    def script(request: dict[str, Any], number: int) -> Reply:
        if request["model"] == "gpt-4o-mini":
            return Reply("not json", usage={"prompt_tokens": 50, "completion_tokens": 50})
        return Reply('{"ok": true}', usage={"prompt_tokens": 50, "completion_tokens": 50})

    with FakeLLM(script) as server:
        result = run(
            server, "-m", "gpt-4o-mini", "--fallback-model", "gpt-4o", "--output-format",
            "json", "--max-tokens", "100", "--max-cost", "0.01", "-j", "4", stdin=words(20),
        )  # fmt: skip
        asked = {
            last_user_message(request).split()[0].rstrip(".")
            for request in server.requests
            if request["model"] == "gpt-4o-mini"
        }
    assert result.status == 4, result.stderr
    by_id = outputs(result)
    assert {f"w{number}" for number in by_id} >= {word for word in asked if word.startswith("w")}
    failed = [record for record in by_id.values() if "error" in record]
    assert failed and all(record["answer"] == "not json" for record in failed)


def test_the_result_field_cannot_be_the_model_key() -> None:
    with FakeLLM() as server:
        result = run(
            server, "-m", "a", "--fallback-model", "b", "--field", "_model", stdin=words(1)
        )
    assert result.status == 2 and "--field _model" in result.stderr
