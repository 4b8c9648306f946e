"""--notify URL|cmd:COMMAND: a receiving server of the test suite's own (the standard library's
HTTP server on loopback) gets the run's figures once it ends; one that fails, is slow or is not
there changes nothing but a warning, and holds the end up for at most NOTIFY_SECONDS."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN
from fake_llm import FakeLLM
from test_rate_limits import environment_for_processes
from test_status import slow, words

from agents.map.notify import NOTIFY_SECONDS


class Receiver:
    """Takes POSTs, answering with ``status`` after ``delay`` seconds (a 3xx points to /moved)."""

    def __init__(self, status: int = 200, delay: float = 0.0) -> None:
        self.status = status
        self.delay = delay
        self.gets = 0
        self.posts: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.posts.append((self.path, dict(self.headers), json.loads(body)))
                time.sleep(receiver.delay)
                self.send_response(receiver.status)
                if 300 <= receiver.status < 400:
                    self.send_header("Location", "/moved?secret=s3cr3t")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                receiver.gets += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/hook?secret=s3cr3t"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.close()


def run_map(
    tmp: Path, server: FakeLLM, count: int, *extra: str
) -> tuple[subprocess.CompletedProcess[str], float]:
    source = words(tmp / "in.jsonl", count)
    began = time.monotonic()
    done = subprocess.run(
        [str(BIN / "agents-map"), "--base-url", server.url, "--prompt", "{w}", "-q",
         "--price", "1,2", *extra],
        stdin=source.open("rb"), capture_output=True, text=True, timeout=120,
        env=environment_for_processes(tmp),
    )  # fmt: skip
    return done, time.monotonic() - began


def test_one_post_per_run_with_the_stats_and_the_outcome(tmp: Path, receiver: Receiver) -> None:
    with FakeLLM(slow(0.0, failing="w2")) as server:
        done, _ = run_map(tmp, server, 20, "--notify", receiver.url, "--stats",
                          str(tmp / "stats.json"), "--max-retries", "0")  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert len(receiver.posts) == 1
    path, headers, body = receiver.posts[0]
    assert path == "/hook?secret=s3cr3t" and headers["Content-Type"] == "application/json"
    stats = json.loads((tmp / "stats.json").read_text())
    assert {key: body[key] for key in stats} == stats  # the --stats document, whole
    assert body["outcome"]["exit_status"] == 3 and body["outcome"]["stopped"] is None
    assert body["records"] == 20 and body["failed"] == 1 and len(body["job"]) == 16


def test_a_capped_run_and_a_ctrl_c_notify_too(tmp: Path, receiver: Receiver) -> None:
    command = ["--notify", receiver.url, "--notify", f"cmd:cat > {tmp}/told.json"]
    with FakeLLM(slow(0.05)) as server:
        capped, _ = run_map(tmp, server, 200, *command, "--max-cost", "0.0002", "-j", "2")
        assert capped.returncode == 4, capped.stderr
        running = subprocess.Popen(
            [str(BIN / "agents-map"), "--base-url", server.url, "--prompt", "{w}", "-q", *command],
            stdin=words(tmp / "more.jsonl", 500).open("rb"), stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, env=environment_for_processes(tmp),
        )  # fmt: skip
        time.sleep(1.0)
        running.send_signal(signal.SIGINT)
        assert running.wait(timeout=30) == 130
    outcomes = [body["outcome"] for _, _, body in receiver.posts]
    assert [outcome["exit_status"] for outcome in outcomes] == [4, 130]
    assert outcomes[0]["stopped"] == "max_cost"
    told = json.loads((tmp / "told.json").read_text())  # (the last run's, by the command)
    assert told["outcome"]["exit_status"] == 130 and told["records"] > 0


@pytest.mark.parametrize("kind", ["refused", "failing", "slow", "command", "redirect"])
def test_a_webhook_that_fails_changes_nothing_but_a_warning(tmp: Path, kind: str) -> None:
    makers = {"failing": lambda: Receiver(500), "slow": lambda: Receiver(delay=30),
              "redirect": lambda: Receiver(302)}  # fmt: skip
    failing = makers[kind]() if kind in makers else None
    if kind == "refused":
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        target = f"http://127.0.0.1:{port}/hook?token=s3cr3t"
    elif kind == "command":
        target = "cmd:sleep 30"
    else:
        assert failing is not None
        target = failing.url
    try:
        with FakeLLM(slow(0.0)) as server:
            quiet, plain = run_map(tmp, server, 10)
            done, took = run_map(tmp, server, 10, "--notify", target)
    finally:
        if failing is not None:
            failing.close()
    assert quiet.returncode == done.returncode == 0, done.stderr
    assert "--notify" in done.stderr and "not affected" in done.stderr
    assert "s3cr3t" not in done.stderr  # (a webhook's secret is never shown)
    assert took - plain <= NOTIFY_SECONDS + 1.5, (took, plain)
    if kind == "failing":
        assert failing is not None
        assert len(failing.posts) == 3 and "HTTP 500" in done.stderr  # (tried again)
    if kind == "redirect":  # (not followed: a GET without the document would look like success)
        assert failing is not None
        assert len(failing.posts) == 1 and failing.gets == 0 and "HTTP 302" in done.stderr


def test_a_webhook_with_a_user_and_password_in_its_url(tmp: Path, receiver: Receiver) -> None:
    url = receiver.url.replace("http://", "http://hook%40me:p%3Ass@")
    with FakeLLM(slow(0.0)) as server:
        done, _ = run_map(tmp, server, 3, "--notify", url)
    assert done.returncode == 0 and "--notify" not in done.stderr, done.stderr
    ((_, headers, body),) = receiver.posts
    import base64

    assert headers["Authorization"] == "Basic " + base64.b64encode(b"hook@me:p:ss").decode()
    assert body["process"]["pid"] > 0 and body["outcome"]["exit_status"] == 0


def test_a_target_that_is_neither_a_url_nor_a_command_is_a_usage_error(tmp: Path) -> None:
    for target in ("hooks.example.com/x", "ftp://example.com/x", "cmd:  "):
        done = subprocess.run(
            [str(BIN / "agents-map"), "--base-url", "http://127.0.0.1:9/v1", "--prompt", "{w}",
             "--notify", target],
            input='{"_id": 1, "w": "x"}\n', capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert done.returncode == 2, (target, done.stderr)
        assert "--notify" in done.stderr
