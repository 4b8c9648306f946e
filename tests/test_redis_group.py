"""--rate-group redis://HOST:PORT/NAME: one budget for processes on many hosts, kept in a real
redis-server (Debian's package) that the tests start on a free loopback port. The provider is the
fake of the test suite, which counts every sliding window (a real one cannot be made to)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BIN
from fake_llm import FakeLLM, Limited
from test_rate_limits import Recorded, environment_for_processes, member

pytestmark = pytest.mark.service

REDIS = shutil.which("redis-server") or (
    "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Redis:
    """A redis-server of the test's own: nothing saved to disk, loopback only."""

    def __init__(self, folder: Path, password: str | None = None) -> None:
        self.folder = folder
        self.port = free_port()
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert REDIS is not None
        command = [
            REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.folder),
        ]  # fmt: skip
        if self.password:
            command += ["--requirepass", self.password]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64):
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def url(self, name: str = "shared") -> str:
        return f"redis://127.0.0.1:{self.port}/{name}"


@pytest.fixture
def redis(tmp: Path) -> Iterator[Redis]:
    if REDIS is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    pytest.importorskip("redis", reason="the redis client is not installed: agents[redis]")
    server = Redis(tmp)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_four_processes_on_one_redis_budget_stay_under_it(tmp: Path, redis: Redis) -> None:
    limit = Recorded(requests=20, window=2.0, headers=False)  # 600 a minute
    names = [f"p{k}x" for k in range(4)]
    with FakeLLM(limit) as server:
        members = [member(server, tmp, name, 20, 0, group=redis.url()) for name in names]
        statuses = [process.wait(timeout=60) for process in members]
    assert statuses == [0, 0, 0, 0]
    assert limit.answered == 80
    assert limit.refused == 0
    assert limit.most_requests <= 20
    seconds, counts = limit.shares(names)
    assert sum(counts.values()) / seconds >= 0.8 * 10 * 0.97  # and the budget is used
    equal = sum(counts.values()) / len(names)
    assert all(abs(count - equal) <= 0.25 * equal for count in counts.values()), counts


def test_redis_stopped_and_restarted_mid_run_waits_then_goes_on(tmp: Path, redis: Redis) -> None:
    """The group cannot be asked while Redis is down: nothing is sent (the limit holds), the
    processes say so and wait, and go on when it is back."""
    limit = Limited(requests=20, window=2.0, headers=False)
    with FakeLLM(limit) as server:
        members = [member(server, tmp, f"r{k}", 25, 0, group=redis.url()) for k in range(2)]
        deadline = time.monotonic() + 30
        while limit.answered < 10:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        redis.stop()
        time.sleep(0.5)  # requests admitted before the stop are answered meanwhile
        during = limit.answered
        time.sleep(2.0)
        assert limit.answered == during, "requests went out while the group was unreachable"
        redis.start()
        statuses = [process.wait(timeout=60) for process in members]
        errors = [process.stderr.read().decode() for process in members if process.stderr]
    assert statuses == [0, 0], errors
    assert limit.answered == 50 and limit.refused == 0
    assert limit.most_requests <= 20
    for text in errors:
        assert "cannot reach Redis" in text and "the group answers again" in text


def test_a_member_killed_with_9_never_blocks_the_others(tmp: Path, redis: Redis) -> None:
    """One member killed mid-run, and a lock left by a member that died holding it: the others
    finish, held up by at most the lock's two seconds."""
    import redis as client

    from agents.map.redis_group import LOCK_MS

    limit = Limited(requests=20, window=2.0, headers=False)
    with FakeLLM(limit) as server:
        doomed = member(server, tmp, "doomed", 200, 0, group=redis.url())
        others = [member(server, tmp, f"k{k}", 15, 0, group=redis.url()) for k in range(2)]
        time.sleep(1.5)
        doomed.kill()
        doomed.wait()
        # a member that dies holding the lock leaves it behind: it expires
        lock = "agents:rate-group:shared:lock"
        while not client.Redis(port=redis.port).set(lock, "dead", px=LOCK_MS, nx=True):
            time.sleep(0.0001)  # (when a live member lets go of it)
        began = time.monotonic()
        statuses = [process.wait(timeout=60) for process in others]
        took = time.monotonic() - began
    assert statuses == [0, 0]
    assert limit.refused == 0 and limit.most_requests <= 20
    assert took < 30  # (the 30 requests left at 10 a second, plus the lock's 2 s)


def test_wrong_or_exposed_credentials_are_usage_errors(tmp: Path) -> None:
    if REDIS is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    pytest.importorskip("redis", reason="the redis client is not installed: agents[redis]")
    locked = Redis(tmp, password="right-password")
    locked.start()
    try:
        environment = environment_for_processes(tmp)

        def agents_map(group: str, password: str | None) -> subprocess.CompletedProcess[str]:
            env = dict(environment)
            env.pop("AGENTS_REDIS_PASSWORD", None)
            if password is not None:
                env["AGENTS_REDIS_PASSWORD"] = password
            return subprocess.run(
                [str(BIN / "agents-map"), "--base-url", "http://127.0.0.1:9/v1", "--prompt",
                 "{w}", "--rpm", "60", "--rate-group", group],
                input='{"_id": 1, "w": "x"}\n', capture_output=True, text=True, env=env,
                timeout=30,
            )  # fmt: skip

        wrong = agents_map(locked.url(), "wrong-password")
        assert wrong.returncode == 2 and "refuses the password" in wrong.stderr
        assert "AGENTS_REDIS_PASSWORD" in wrong.stderr
        exposed = agents_map(f"redis://:right-password@127.0.0.1:{locked.port}/g", None)
        assert exposed.returncode == 2 and "right-password" not in exposed.stderr
        named = agents_map(f"redis://127.0.0.1:{locked.port}/bad name", None)
        assert named.returncode == 2 and "NAME of letters" in named.stderr
    finally:
        locked.stop()


def test_the_client_is_an_optional_extra(tmp: Path) -> None:
    """Without the redis package, a Redis group is a usage error that says what to install."""
    blocker = tmp / "blocker"
    blocker.mkdir()
    (blocker / "redis.py").write_text("raise ImportError('not installed here')\n")
    env = {**environment_for_processes(tmp), "PYTHONPATH": str(blocker)}
    done = subprocess.run(
        [sys.executable, "-c", "from agents.cli.map import entry_point; entry_point()",
         "--base-url", "http://127.0.0.1:9/v1", "--prompt", "{w}", "--rpm", "60",
         "--rate-group", "redis://127.0.0.1:9/g"],
        input='{"_id": 1, "w": "x"}\n', capture_output=True, text=True, env=env, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "pip install 'agents[redis]'" in done.stderr


def test_a_member_that_joins_keeps_the_limit_the_group_learned(tmp: Path, redis: Redis) -> None:
    """A member learns the limit from the server's headers; others join later from hosts that
    never saw it (their own runtime folders, no --rpm) with -j 20: they keep the group's
    limit from their first request instead of sending 20 at once."""
    import subprocess as run

    limit = Limited(requests=20, window=2.0, headers=True)  # headers say 600 a minute
    env = environment_for_processes(tmp)
    with FakeLLM(limit) as server:

        def joining(name: str, count: int) -> run.Popen[bytes]:
            source = tmp / f"{name}.jsonl"
            source.write_bytes(
                b"".join(b'{"_id": "%s-%d", "word": "w%d"}\n' % (name.encode(), n, n)
                         for n in range(count))
            )  # fmt: skip
            own = {**env, "AGENTS_RUNTIME_DIR": str(tmp / f"runtime-{name}")}
            return run.Popen(
                [str(BIN / "agents-map"), "--base-url", server.url, "--prompt", "{word}", "-q",
                 "--rate-group", redis.url("learned"), "-j", "20"],
                stdin=source.open("rb"), stdout=run.DEVNULL, stderr=run.PIPE, env=own,
            )  # fmt: skip

        first = joining("first", 40)
        deadline = time.monotonic() + 30
        while limit.answered < 15:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        others = [joining(f"late{k}", 10) for k in range(3)]
        statuses = [process.wait(timeout=60) for process in (first, *others)]
    assert statuses == [0, 0, 0, 0]
    assert limit.most_requests <= 20
    assert limit.refused <= 1, limit.refused


def test_a_group_document_of_another_shape_is_started_afresh(tmp: Path, redis: Redis) -> None:
    import redis as client

    client.Redis(port=redis.port).set(
        "agents:rate-group:odd", '{"requests": 5, "members": 3, "queue": "x"}'
    )
    limit = Limited(requests=20, window=2.0, headers=False)
    with FakeLLM(limit) as server:
        process = member(server, tmp, "odd", 10, 0, group=redis.url("odd"))
        assert process.wait(timeout=60) == 0
    assert limit.answered == 10 and limit.refused == 0
