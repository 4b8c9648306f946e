"""Helpers shared by the tests: in-process runs with captured streams, and real subprocesses."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from agents.cli import read, write
from agents.cli._run import Streams

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "bin"
COMMANDS = {"agents-read": read.main, "agents-write": write.main}


@dataclass
class Result:
    status: int
    stdout: bytes
    stderr: str

    @property
    def records(self) -> list[dict[str, object]]:
        return [orjson.loads(line) for line in self.stdout.splitlines() if line.strip()]


def run(command: str, *args: str, stdin: bytes = b"") -> Result:
    """Run a command in-process with its own streams, as main(argv, streams)."""
    out, err = io.BytesIO(), io.StringIO()
    streams = Streams(stdin=io.BytesIO(stdin), stdout=out, stderr=err)
    status = COMMANDS[command](list(args), streams)
    return Result(status, out.getvalue(), err.getvalue())


def shell(
    script: str, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run a shell pipeline with the checkout's bin/ first on PATH."""
    # bin/ first, then this interpreter's folder, so that the launchers' python3 is ours
    python_bin = os.path.dirname(sys.executable)
    env = dict(os.environ, PATH=os.pathsep.join([str(BIN), python_bin, os.environ["PATH"]]))
    return subprocess.run(
        ["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def jsonl(*records: dict[str, object]) -> bytes:
    return b"".join(orjson.dumps(record) + b"\n" for record in records)


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path


def python() -> str:
    return sys.executable


# End-to-end tests on the real local model ----------------------------------------------------

E2E_RAN: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "e2e: runs the real commands against the real local model (agents-local); "
        "skip locally with -m 'not e2e'; with CI=true a skipped one is a failure",
    )
    config.addinivalue_line(
        "markers",
        "service: needs a real service the tests start (redis-server, sshd, chromium); skipped "
        "with the reason where it is not installed, and with CI=true a skipped one is a failure",
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report = outcome.get_result()
    e2e = item.get_closest_marker("e2e") is not None
    if not e2e and item.get_closest_marker("service") is None:
        return
    if e2e and report.when == "call" and report.passed:
        E2E_RAN.append(item.nodeid)
    if report.skipped and os.environ.get("CI") == "true":
        report.outcome = "failed"
        kind = "an end-to-end test" if e2e else "a test of a real service"
        report.longrepr = f"{kind} was skipped in CI: {report.longrepr}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.write_line(f"end-to-end tests on the local model that ran: {len(E2E_RAN)}")
