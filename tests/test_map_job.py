"""agents-map for people: job files, dry runs, statistics, summaries, logs, progress."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import BIN, ROOT, Result, jsonl
from fake_llm import FakeLLM, Reply, echo
from test_map import KEY, Sleeps, words

from agents.cli import map as map_cli
from agents.cli._run import Streams

EXAMPLES = ROOT / "docs" / "examples"


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "HTTP_PROXY", "http_proxy", "JOB_MODEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def run(*argv: str, stdin: bytes = b"") -> Result:
    out, err = io.BytesIO(), io.StringIO()
    status = map_cli.main(
        list(argv), Streams(stdin=io.BytesIO(stdin), stdout=out, stderr=err), sleep=Sleeps()
    )
    return Result(status, out.getvalue(), err.getvalue())


def write_job(folder: Path, text: str) -> str:
    path = folder / "job.yaml"
    path.write_text(text)
    return str(path)


# Configuration ------------------------------------------------------------------------------


def test_file_then_environment_then_flags(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeLLM() as server, FakeLLM() as other:
        job = write_job(
            tmp,
            """
llm:
  model: ${JOB_MODEL}
  base_url: http://127.0.0.1:9/v1
  temperature: 0.5
processing:
  concurrency: 2
prompt: "From the file: {word}"
""",
        )
        monkeypatch.setenv("JOB_MODEL", "file-model")
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)  # the environment beats the file
        result = run("--config", job, "-q", stdin=words(1))
        assert result.status == 0, result.stderr
        assert server.requests[0]["model"] == "file-model"
        assert server.requests[0]["temperature"] == 0.5
        assert server.requests[0]["messages"][0]["content"] == "From the file: w1"
        flags = run(
            "--config",
            job,
            "-q",
            "--base-url",
            other.url,
            "--model",
            "flag-model",
            "--prompt",
            "From a flag: {word}",
            "--temperature",
            "0",
            stdin=words(1),
        )
        assert flags.status == 0, flags.stderr
        assert other.requests[0]["model"] == "flag-model"
        assert other.requests[0]["temperature"] == 0
        assert other.requests[0]["messages"][0]["content"] == "From a flag: w1"


def test_relative_paths_come_from_the_file_folder(tmp: Path) -> None:
    folder = tmp / "jobs"
    folder.mkdir()
    (folder / "prompt.txt").write_text("Q: {word}")
    (folder / "schema.json").write_text('{"type": "object", "required": ["a"]}')
    job = write_job(
        folder,
        """
prompt:
  user_file: prompt.txt
  system: Be brief.
output:
  format: structured
  schema: schema.json
  stats: stats.json
""",
    )
    with FakeLLM(lambda request, number: Reply('{"a": 1}')) as server:
        os.chdir(tmp)
        result = run("--config", job, "--base-url", server.url, "-q", stdin=words(1))
    assert result.status == 0, result.stderr
    assert server.requests[0]["messages"][1]["content"] == "Q: w1"
    assert (folder / "stats.json").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("llm:\n  modle: x\n", "llm.modle: unknown key\n  hint: did you mean llm.model?"),
        ("lm:\n  model: x\n", "lm: unknown key\n  hint: did you mean llm?"),
        (
            "processing:\n  concurrency: ten\n",
            "processing.concurrency: expected a whole number, got text ('ten')",
        ),
        (
            "llm:\n  temperature: true\n",
            "llm.temperature: expected a number, got true/false (True)",
        ),
        ("output:\n  format: xml\n", "output.format: 'xml' is not one of text, json, structured"),
        (
            "llm:\n  api_key: ${NOT_SET_ANYWHERE}\n",
            "llm.api_key: ${NOT_SET_ANYWHERE} is not set in the environment",
        ),
        ("prompt:\n  usr: hi\n", "prompt.usr: unknown key\n  hint: did you mean prompt.user?"),
        ("llm: [1, 2]\n", "llm: expected a mapping of keys, got a list"),
        (
            "llm:\n  price: 3\n",
            "llm.price: expected [input, output] dollars per million tokens, got a number (3)",
        ),
    ],
)
def test_config_errors_name_their_place(tmp: Path, text: str, message: str) -> None:
    job = write_job(tmp, text)
    result = run("--config", job, "--prompt", "{word}", stdin=words(1))
    assert result.status == 2
    assert result.stderr == f"agents-map: error: {message}\n"


def test_invalid_yaml_names_the_line(tmp: Path) -> None:
    job = write_job(tmp, "llm:\n  model: [unclosed\n")
    result = run("--config", job, "--prompt", "x")
    assert result.status == 2
    assert result.stderr.startswith(f"agents-map: error: {job}:3: not valid YAML")


# Dry run ------------------------------------------------------------------------------------


def test_dry_run_renders_estimates_and_sends_nothing(tmp: Path) -> None:
    records = jsonl({"_id": 1, "word": "a" * 400}, {"_id": 2, "word": "bb"}, {"_id": 3, "x": 1})
    with FakeLLM() as server:
        result = run(
            "--base-url",
            server.url,
            "--prompt",
            "Say {word}",
            "--dry-run",
            "--limit",
            "1",
            "--max-tokens",
            "10",
            "--model",
            "gpt-4o-mini",
            stdin=records,
        )
        assert server.requests == []
    assert result.status == 3, result.stderr  # a record would fail: a script can gate on it
    assert result.records == [
        {
            "_id": 1,
            "request": {
                "model": "gpt-4o-mini",
                "max_tokens": 10,
                "messages": [{"role": "user", "content": "Say " + "a" * 400}],
            },
        }
    ]
    # 404 characters → 101 tokens + 4; 6 characters → 1 token + 4
    assert result.stderr == (
        "Dry run: 3 records, nothing sent\n"
        "Missing fields: 1 record (first: #3 lacks word)\n"
        "Estimated input tokens: 110 (about 4 characters a token)\n"
        "Estimated output tokens: up to 20\n"
        "Estimated cost: up to $0.00\n"
    )


def test_dry_run_needs_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    result = run("--prompt", "{word}", "--dry-run", "--model", "unknown-model", stdin=words(2))
    assert result.status == 0
    assert result.stderr.splitlines()[-1] == (
        "Estimated cost: unknown (no price for unknown-model; give --price IN,OUT)"
    )


@pytest.mark.parametrize("name", ["translation", "summarisation", "classification", "extraction"])
def test_every_example_job_runs_dry(name: str, tmp: Path) -> None:
    inputs = {
        "translation": "words.csv",
        "summarisation": "articles.jsonl",
        "classification": "reviews.csv",
        "extraction": "people.txt",
    }
    source = EXAMPLES / inputs[name]
    read = subprocess.run(
        [str(BIN / "agents-read"), str(source)],
        capture_output=True,
        check=True,
        env={**os.environ, "PATH": f"{os.path.dirname(os.sys.executable)}:{os.environ['PATH']}"},
    )
    result = run("--config", str(EXAMPLES / f"{name}.yaml"), "--dry-run", stdin=read.stdout)
    assert result.status == 0, result.stderr
    assert "Missing fields" not in result.stderr
    requests = [record["request"] for record in result.records]
    assert len(requests) == len(read.stdout.splitlines()) > 0
    if name in ("translation", "classification", "extraction"):
        assert requests[0]["response_format"]["type"] == "json_schema"


# Statistics, summary, logs ------------------------------------------------------------------


def usage_script(request: dict[str, Any], number: int) -> Reply:
    if number % 5 == 4:
        return Reply("busy", status=503)
    reply = echo(request, number)
    reply.usage = {
        "prompt_tokens": 10 + number,
        "completion_tokens": 3,
        "prompt_tokens_details": {"cached_tokens": 2},
        "completion_tokens_details": {"reasoning_tokens": 1},
    }
    reply.delay = 0.01
    return reply


def test_stats_and_summary_match_the_server(tmp: Path) -> None:
    stats = tmp / "stats.json"
    with FakeLLM(usage_script) as server:
        result = run(
            "--base-url",
            server.url,
            "--prompt",
            "{word}",
            "-j",
            "1",
            "--stats",
            str(stats),
            "--price",
            "1,2",
            "--retry-delay",
            "0",
            stdin=words(8),
        )
        answered = [n for n in range(len(server.requests)) if n % 5 != 4]
    assert result.status == 0, result.stderr
    prompt = sum(10 + n for n in answered)
    completion = 3 * len(answered)
    document = orjson.loads(stats.read_bytes())
    assert document["records"] == document["succeeded"] == 8
    failures = len(server.requests) - len(answered)
    assert failures >= 1
    assert document["requests"] == len(server.requests) == 8 + failures
    assert document["retries"] == {"server_error": failures}
    assert document["tokens"] == {
        "input": prompt,
        "output": completion,
        "cached_input": 2 * len(answered),
        "reasoning": len(answered),
        "total": prompt + completion,
    }
    cost = (prompt * 1 + completion * 2) / 1_000_000
    assert document["cost_usd"] == pytest.approx(cost)
    assert 0 < document["latency_seconds"]["p50"] <= document["latency_seconds"]["max"]
    assert result.stderr.splitlines() == [
        f"Tokens used: {prompt + completion:,} (input: {prompt:,} | output: {completion:,} | "
        f"cached input: {2 * len(answered)} | reasoning: {len(answered)})",
        f"Estimated cost: ${cost:,.2f}",
    ]


def test_debug_log_shows_requests_and_never_the_key(tmp: Path) -> None:
    log = tmp / "map.log"
    stats = tmp / "stats.json"

    def script(request: dict[str, Any], number: int) -> Reply:
        if number == 0:
            return Reply(f"invalid key {KEY}", status=500)
        return echo(request, number)

    with FakeLLM(script) as server:
        result = run(
            "--base-url",
            server.url,
            "--prompt",
            "{word}",
            "--log-level",
            "DEBUG",
            "--log-file",
            str(log),
            "--stats",
            str(stats),
            stdin=words(2),
        )
    assert result.status == 0
    text = log.read_text()
    assert '"messages":[{"role":"user","content":"w1"}]' in text
    assert "usage=prompt:10,completion:5" in text
    assert "retry 2 after server_error" in text and "waiting" in text
    assert "[redacted]" in text
    for output in (text, result.stderr, result.stdout.decode(), stats.read_text()):
        assert KEY not in output


# Progress in a real terminal ----------------------------------------------------------------


def in_tmux(command: str, width: int, height: int = 30, timeout: float = 30) -> list[str]:
    """``command`` run in a tmux terminal of ``width`` columns; the screen's lines once it has
    finished (wrapped lines joined, so that a line too long for the terminal shows as such)."""
    session = f"agents-{os.getpid()}-{width}-{time.monotonic_ns()}"
    env_path = f"{os.path.dirname(os.sys.executable)}:{os.environ['PATH']}"
    subprocess.run(
        [
            "tmux",
            "new-session",
            "-d",
            "-s",
            session,
            "-x",
            str(width),
            "-y",
            str(height),
            f"PATH={env_path} OPENAI_API_KEY=x {command}; echo DONE; sleep {timeout}",
        ],
        check=True,
    )
    try:
        seen = ""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and "DONE" not in seen:
            time.sleep(0.1)
            seen = subprocess.run(
                ["tmux", "capture-pane", "-p", "-J", "-t", session], capture_output=True, text=True
            ).stdout
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False)
    shown = [line.rstrip() for line in seen.splitlines() if line.strip()]
    assert "DONE" in shown, shown
    return shown


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_progress_in_a_real_terminal(tmp: Path) -> None:
    source = tmp / "words.jsonl"
    source.write_bytes(words(40))
    with FakeLLM(lambda request, number: Reply("x", delay=0.1)) as server:
        session = f"agents-test-{os.getpid()}"
        command = (
            f"{BIN / 'agents-map'} --base-url {server.url} --prompt '{{word}}' -j 2 "
            f"< {source} > {tmp / 'out.jsonl'}; sleep 30"
        )
        env_path = f"{os.path.dirname(os.sys.executable)}:{os.environ['PATH']}"
        subprocess.run(
            [
                "tmux",
                "new-session",
                "-d",
                "-s",
                session,
                "-x",
                "150",
                "-y",
                "20",
                f"PATH={env_path} OPENAI_API_KEY=x {command}",
            ],
            check=True,
        )
        try:
            seen = ""
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                seen = subprocess.run(
                    ["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True
                ).stdout
                if "Processing:" in seen and "/40" in seen:
                    break
                time.sleep(0.1)
            middle = seen
            while time.monotonic() < deadline and "40/40" not in seen:
                seen = subprocess.run(
                    ["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True
                ).stdout
                time.sleep(0.1)
        finally:
            subprocess.run(["tmux", "kill-session", "-t", session], check=False)
    assert "Processing:" in middle and "| Rate:" in middle and "ETA:" in middle
    assert "Errors: 0" in middle
    final = [line for line in seen.splitlines() if line.strip()]
    assert any("40/40 (100.0%)" in line for line in final)
    assert sum("Processing:" in line for line in final) == 1  # redrawn in place, not scrolled


def test_no_progress_when_stderr_is_a_file_unless_asked(tmp: Path) -> None:
    with FakeLLM() as server:
        quiet = run("--base-url", server.url, "--prompt", "{word}", stdin=words(3))
        asked = run("--base-url", server.url, "--prompt", "{word}", "--progress", stdin=words(3))
    assert "Processing" not in quiet.stderr
    assert asked.stderr.splitlines()[-3].startswith("Processing: 3 done | Rate: ")


def test_every_option_has_its_place_in_the_job_file() -> None:
    from agents.map import config

    parser = map_cli.build_parser(Streams())
    dests = {action.dest for action in parser._actions if action.option_strings} - {
        "help",
        "version",
        "config",
    }
    placed = {key.dest for table in config.SECTIONS.values() for key in table.values()}
    placed |= {key.dest for key in config.PROMPT_KEYS.values()}
    assert dests - placed == set()


def test_total_gives_a_pipe_its_percentage() -> None:
    with FakeLLM() as server:
        result = run(
            "--base-url",
            server.url,
            "--prompt",
            "{word}",
            "--progress",
            "--total",
            "3",
            stdin=words(3),
        )
    final = [line for line in result.stderr.splitlines() if line.startswith("Processing:")][-1]
    assert "3/3 (100.0%)" in final and "ETA: 0s" in final


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
@pytest.mark.parametrize("width", [60, 80])
def test_progress_fits_a_narrow_terminal_and_leaves_no_stale_lines(tmp: Path, width: int) -> None:
    lines = [orjson.dumps({"_id": i, "word": f"w{i}"}) for i in range(1, 41)]
    lines.insert(20, b"not json at all")  # a warning printed in the middle of the run
    source = tmp / "words.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")

    def script(request: dict[str, Any], number: int) -> Reply:
        if number % 3 == 0:  # long error messages, with a newline and wide characters
            return Reply("bad request: " + "字" * 30 + "\nsecond line " + "x" * 200, status=400)
        return Reply("x", delay=0.05)

    with FakeLLM(script) as server:
        shown = in_tmux(
            f"{BIN / 'agents-map'} --base-url {server.url} -m m --prompt '{{word}}' -j 2 "
            f"< {source} > {tmp / 'out.jsonl'}",
            width,
        )
    from agents.map.progress import columns

    progress = [line for line in shown if "/40 (" in line or line.startswith("Errors:")]
    # -J joins wrapped lines: a progress line longer than the terminal would show here
    assert all(columns(line) <= width for line in progress), shown
    assert sum("/40 (" in line for line in shown) == 1, shown  # one progress line, redrawn
    assert sum(line.startswith("Errors:") for line in shown) == 1, shown
    assert any("40/40 (100.0%)" in line for line in shown), shown
    assert any("Last: bad_request" in line and line.endswith("…") for line in shown), shown
    assert any(line.startswith("agents-map: warning: <stdin>:21: invalid JSON") for line in shown)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_results_on_the_terminal_are_not_erased_by_the_progress(tmp: Path) -> None:
    source = tmp / "words.jsonl"
    source.write_bytes(words(8))
    with FakeLLM(lambda request, number: Reply("x", delay=0.3)) as server:
        shown = in_tmux(
            f"{BIN / 'agents-map'} --base-url {server.url} -m m --prompt '{{word}}' -k -j 1 "
            f"< {source}",
            120,
            height=40,
        )
    results = [line for line in shown if line.startswith('{"_id":')]
    assert [orjson.loads(line)["_id"] for line in results] == list(range(1, 9)), shown
    assert sum("8/8 (100.0%)" in line for line in shown) == 1, shown
