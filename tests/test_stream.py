"""--stream and --idle-timeout against the fake server's SSE mode (a server that stalls or cuts
a stream mid-answer on cue); the same against the local model is in test_e2e_local.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN
from fake_llm import FakeLLM, Reply, last_user_message
from test_rate_limits import environment_for_processes

from agents.errors import Retryable
from agents.map.streaming import assemble


def run_map(
    tmp: Path, server: FakeLLM, count: int, *extra: str
) -> subprocess.CompletedProcess[str]:
    source = tmp / "in.jsonl"
    source.write_text("".join(f'{{"_id": {n}, "w": "word {n} ü"}}\n' for n in range(count)))
    return subprocess.run(
        [str(BIN / "agents-map"), "--base-url", server.url, "--prompt", "{w}", "-q", "-k",
         "--price", "1,2", "--stats", str(tmp / "stats.json"), *extra],
        stdin=source.open("rb"), capture_output=True, text=True, timeout=120,
        env=environment_for_processes(tmp),
    )  # fmt: skip


def long_answers(request: dict[str, Any], number: int) -> Reply:
    word = last_user_message(request)
    usage = {"prompt_tokens": 7, "completion_tokens": 30, "total_tokens": 37}
    return Reply(content=f"a long answer to «{word}», 🙂 " * 5, usage=usage, chunk=4)


def test_streamed_answers_are_the_whole_answers(tmp: Path) -> None:
    with FakeLLM(long_answers) as server:
        whole = run_map(tmp, server, 30, "-j", "8")
        whole_stats = json.loads((tmp / "stats.json").read_text())
        streamed = run_map(tmp, server, 30, "-j", "8", "--stream")
        stats = json.loads((tmp / "stats.json").read_text())
        asked = [request.get("stream") for request in server.requests]
    assert whole.returncode == streamed.returncode == 0, streamed.stderr
    assert whole.stdout == streamed.stdout
    assert asked == [None] * 30 + [True] * 30
    assert stats["tokens"] == whole_stats["tokens"] and stats["cost_usd"] == whole_stats["cost_usd"]
    assert whole_stats["first_token_seconds"] is None
    assert whole_stats["estimated_usage"] == stats["estimated_usage"] == 0
    assert 0 < stats["first_token_seconds"]["p50"] <= stats["latency_seconds"]["max"]


def test_a_stream_that_stalls_is_given_up_after_the_idle_timeout_and_retried(tmp: Path) -> None:
    """Each record's first answer stalls after two chunks (and one more is cut off): each is
    retried after --idle-timeout, long before --timeout, and every result is whole."""
    seen: dict[str, int] = {}

    def stalling(request: dict[str, Any], number: int) -> Reply:
        word = last_user_message(request)
        seen[word] = seen.get(word, 0) + 1
        reply = Reply(content=f"the answer to {word}", chunk=2, chunk_delay=0.01)
        if seen[word] == 1:
            reply.stall = 2
            reply.stall_action = "cut" if word == "word 3 ü" else "hang"
        return reply

    with FakeLLM(stalling) as server:
        began = time.monotonic()
        done = run_map(tmp, server, 6, "--stream", "--idle-timeout", "0.5", "--timeout", "60")
        took = time.monotonic() - began
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["result"] for r in results] == [f"the answer to word {n} ü" for n in range(6)]
    stats = json.loads((tmp / "stats.json").read_text())
    assert stats["retries"] == {"idle_timeout": 5, "truncated_body": 1}
    assert took < 20  # (not the 60 s of --timeout)


def test_idle_timeout_needs_stream_and_a_positive_value(tmp: Path) -> None:
    for flags in (["--idle-timeout", "5"], ["--stream", "--idle-timeout", "0"]):
        done = subprocess.run(
            [str(BIN / "agents-map"), "--base-url", "http://127.0.0.1:9/v1", "--prompt", "{w}",
             *flags],
            input='{"_id": 1, "w": "x"}\n', capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert done.returncode == 2 and "--idle-timeout" in done.stderr, done.stderr


class Body:
    """A response body given in pieces, as the network cuts it."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = list(pieces)

    async def readany(self) -> bytes:
        return self.pieces.pop(0) if self.pieces else b""


def events(*chunks: dict[str, Any], done: bool = True) -> bytes:
    text = b"".join(b"data: " + json.dumps(chunk).encode() + b"\n\n" for chunk in chunks)
    return text + (b"data: [DONE]\n\n" if done else b"")


@pytest.mark.parametrize("seed", range(20))
def test_events_cut_anywhere_make_the_same_answer(seed: int) -> None:
    """The same stream, cut into pieces at random places (inside a line, inside a UTF-8
    character), with comments and event names between: always the same completion."""
    import random

    chooser = random.Random(seed)
    text = "héllo wörld 🙂 " * 40
    chunks: list[dict[str, Any]] = [{"choices": [{"index": 0, "delta": {"role": "assistant"}}]}]
    for k in range(0, len(text), 7):
        chunks.append({"choices": [{"index": 0, "delta": {"content": text[k : k + 7]}}]})
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    chunks.append({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 9}})
    raw = b": keep-alive\n\nevent: message\n" + events(*chunks)
    cuts = sorted(chooser.sample(range(1, len(raw)), 25))
    pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    whole, first = asyncio.run(assemble(Body(pieces), None, time.monotonic()))
    (choice,) = whole["choices"]
    assert choice["message"]["content"] == text and choice["finish_reason"] == "stop"
    assert whole["usage"] == {"prompt_tokens": 3, "completion_tokens": 9}
    assert first >= 0


def test_a_stream_without_its_end_or_with_an_error_is_retried() -> None:
    start = {"choices": [{"index": 0, "delta": {"content": "half"}}]}
    for body, kind in (
        (events(start, done=False), "truncated_body"),
        (events(start, {"error": {"message": "overloaded"}}), "server_error"),
        (b"data: {not json\n\n", "invalid_response"),
    ):
        with pytest.raises(Retryable) as failed:
            asyncio.run(assemble(Body([body]), None, time.monotonic()))
        assert failed.value.error_type == kind
    finished = events(
        {"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": "stop"}]}, done=False
    )
    whole, _ = asyncio.run(assemble(Body([finished]), None, time.monotonic()))
    assert whole["choices"][0]["message"]["content"] == "x"


def test_the_status_file_shows_the_answers_being_generated(tmp: Path) -> None:
    """With --stream, --status shows each record's answer as it comes: its ID, its length so
    far and its last characters, which are the start of the answer it ends with."""
    import threading

    def slow_chunks(request: dict[str, Any], number: int) -> Reply:
        return Reply(
            content=f"slowly: {last_user_message(request)} " * 6, chunk=5, chunk_delay=0.05
        )

    status = tmp / "status.json"
    seen: list[dict[str, Any]] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.wait(0.05):
            with contextlib.suppress(OSError, ValueError):
                seen.append(json.loads(status.read_text()))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        with FakeLLM(slow_chunks) as server:
            done = run_map(tmp, server, 12, "--stream", "-j", "3", "--status", str(status))
    finally:
        stop.set()
        thread.join()
    assert done.returncode == 0, done.stderr
    answers = {r["_id"]: r["result"] for r in map(json.loads, done.stdout.splitlines())}
    shown = [entry for document in seen for entry in document.get("generating") or []]
    assert shown, "no answer was shown while it was generated"
    for entry in shown:
        final = answers[entry["id"]]
        assert 0 < entry["characters"] < len(final)
        assert final[: entry["characters"]].endswith(entry["tail"])
    assert not json.loads(status.read_text())["generating"]  # (none left at the end)


@pytest.mark.parametrize("idle", [None, "30"])
def test_a_stream_past_the_timeout_is_a_timeout_and_retried(tmp: Path, idle: str | None) -> None:
    """--timeout ends a streamed answer that goes on too long (stalled, or trickling): a
    timeout, retried, with or without a longer --idle-timeout (not an internal error, and not
    an idle timeout that did not happen)."""
    seen: dict[str, int] = {}

    def stalling_once(request: dict[str, Any], number: int) -> Reply:
        word = last_user_message(request)
        seen[word] = seen.get(word, 0) + 1
        reply = Reply(content=f"the answer to {word}", chunk=2)
        if seen[word] == 1:
            reply.stall = 2
        return reply

    flags = ["--stream", "--timeout", "1.5", "--max-retries", "2"]
    flags += ["--idle-timeout", idle] if idle else []
    with FakeLLM(stalling_once) as server:
        done = run_map(tmp, server, 2, *flags)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp / "stats.json").read_text())["retries"] == {"timeout": 2}


def test_idle_timeout_must_be_a_finite_positive_number(tmp: Path) -> None:
    for value in ("nan", "inf", "-1"):
        done = subprocess.run(
            [str(BIN / "agents-map"), "--base-url", "http://127.0.0.1:9/v1", "--prompt", "{w}",
             "--stream", "--idle-timeout", value],
            input='{"_id": 1, "w": "x"}\n', capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert done.returncode == 2 and "positive number" in done.stderr, (value, done.stderr)


def test_answers_without_usage_are_estimated_and_still_capped(tmp: Path) -> None:
    """A server (a proxy) that streams without the usage: tokens and cost are estimated from
    the text, said once, and --max-cost still stops the run (it never did: the cost was 0)."""

    def no_usage(request: dict[str, Any], number: int) -> Reply:
        return Reply(content="x" * 400, stream_usage=False)  # (100 tokens, estimated)

    with FakeLLM(no_usage) as server:
        done = run_map(tmp, server, 200, "--stream", "--price", "1000,1000", "--max-cost", "2",
                       "-j", "2")  # fmt: skip
    assert done.returncode == 4, done.stderr
    assert done.stderr.count("estimated from the text") == 1
    stats = json.loads((tmp / "stats.json").read_text())
    assert stats["tokens"]["output"] >= 100 and 0 < stats["cost_usd"] <= 2
    assert stats["records"] < 200
    assert stats["estimated_usage"] == stats["records"]


def test_the_idle_timeout_covers_a_server_that_holds_back_its_headers(tmp: Path) -> None:
    seen: dict[str, int] = {}

    def slow_headers(request: dict[str, Any], number: int) -> Reply:
        word = last_user_message(request)
        seen[word] = seen.get(word, 0) + 1
        return Reply(content=f"to {word}", delay=5.0 if seen[word] == 1 else 0.0)

    with FakeLLM(slow_headers) as server:
        began = time.monotonic()
        done = run_map(tmp, server, 2, "--stream", "--idle-timeout", "0.5", "--timeout", "30")
        took = time.monotonic() - began
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp / "stats.json").read_text())["retries"] == {"idle_timeout": 2}
    assert took < 4
