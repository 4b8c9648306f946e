"""--rate-group redis://HOST:PORT/NAME: one budget for processes on many hosts, kept in a real
redis-server (Debian's package) that the tests start on a free loopback port. The provider is the
fake of the test suite, which counts every sliding window (a real one cannot be made to)."""

from __future__ import annotations

import json
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

    def __init__(
        self, folder: Path, password: str | None = None, arguments: tuple[str, ...] = ()
    ) -> None:
        self.folder = folder
        self.port = free_port()
        self.password = password
        self.arguments = arguments  # (e.g. --tls-port, an ACL user)
        self.tls = "--tls-port" in arguments
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert REDIS is not None
        listen = ["--port", "0", "--tls-port"] if self.tls else ["--port"]
        arguments = [a for a in self.arguments if a != "--tls-port"]
        command = [
            REDIS, *listen, str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.folder), *arguments,
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
                    if self.tls:
                        return
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
    """One member killed mid-run (it holds no lock: a change is one script): the others
    finish at the group's rate, within the limit."""
    limit = Limited(requests=20, window=2.0, headers=False)
    with FakeLLM(limit) as server:
        doomed = member(server, tmp, "doomed", 200, 0, group=redis.url())
        others = [member(server, tmp, f"k{k}", 15, 0, group=redis.url()) for k in range(2)]
        time.sleep(1.5)
        doomed.kill()
        doomed.wait()
        began = time.monotonic()
        statuses = [process.wait(timeout=60) for process in others]
        took = time.monotonic() - began
    assert statuses == [0, 0]
    assert limit.refused == 0 and limit.most_requests <= 20
    assert took < 10  # (the 30 requests left, or fewer, at 10 a second)


def run_map(
    tmp: Path, group: str, password: str | None, **variables: str
) -> subprocess.CompletedProcess[str]:
    """agents-map on one record with ``group``, Redis's password in the environment or not;
    the endpoint is never reached (the group is checked first)."""
    env = environment_for_processes(tmp)
    env.pop("AGENTS_REDIS_PASSWORD", None)
    if password is not None:
        env["AGENTS_REDIS_PASSWORD"] = password
    return subprocess.run(
        [str(BIN / "agents-map"), "--base-url", "http://127.0.0.1:9/v1", "--prompt",
         "{w}", "--rpm", "60", "--rate-group", group, "--max-retries", "0"],
        input='{"_id": 1, "w": "x"}\n', capture_output=True, text=True,
        env={**env, **variables}, timeout=30,
    )  # fmt: skip


def test_wrong_or_exposed_credentials_are_usage_errors(tmp: Path) -> None:
    if REDIS is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    pytest.importorskip("redis", reason="the redis client is not installed: agents[redis]")
    # requirepass for the default user, and an ACL user of its own
    locked = Redis(
        tmp,
        password="right-password",
        arguments=("--user", "alice", "on", ">alices", "~*", "&*", "+@all"),
    )
    locked.start()
    try:
        for password in ("wrong-password", None):
            wrong = run_map(tmp, locked.url(), password)
            assert wrong.returncode == 2, wrong.stderr
            assert "Redis refuses this process" in wrong.stderr
            assert "AGENTS_REDIS_PASSWORD" in wrong.stderr
        user = f"redis://alice@127.0.0.1:{locked.port}/g"
        assert "Redis refuses" in run_map(tmp, user, "right-password").stderr
        alice = run_map(tmp, user, "alices")  # (the group is joined: the endpoint is not there)
        assert alice.returncode != 2 and "rate-group" not in alice.stderr, alice.stderr
        exposed = run_map(tmp, f"redis://:right-password@127.0.0.1:{locked.port}/g", None)
        assert exposed.returncode == 2 and "right-password" not in exposed.stderr
        named = run_map(tmp, f"redis://127.0.0.1:{locked.port}/bad name", None)
        assert named.returncode == 2 and "NAME of letters" in named.stderr
        for port in ("99999", "0", "x"):
            bad = run_map(tmp, f"redis://127.0.0.1:{port}/g", None)
            assert bad.returncode == 2 and "from 1 to 65535" in bad.stderr, bad.stderr
        for query in ("db=x", "timeout=3"):
            bad = run_map(tmp, f"redis://127.0.0.1:{locked.port}/g?{query}", None)
            assert bad.returncode == 2 and "db=NUMBER" in bad.stderr, bad.stderr
    finally:
        locked.stop()


def test_the_database_in_the_url_is_the_one_used(tmp: Path, redis: Redis) -> None:
    import redis as client

    limit = Limited(requests=20, window=2.0, headers=False)
    with FakeLLM(limit) as server:
        process = member(server, tmp, "db", 3, 0, group=redis.url("in-db") + "?db=3")
        assert process.wait(timeout=60) == 0
    assert client.Redis(port=redis.port, db=3).exists("agents:rate-group:in-db")
    assert not client.Redis(port=redis.port, db=0).exists("agents:rate-group:in-db")


def test_a_password_changed_mid_run_stops_the_run(tmp: Path) -> None:
    """Waiting cannot fix a password Redis no longer takes: the run stops (exit 1), keeping
    what was answered, and says which variable to set; the same command resumes it."""
    if REDIS is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    import redis as client

    locked = Redis(tmp, password="old")
    locked.start()
    try:
        limit = Limited(requests=10, window=2.0, headers=False)
        env = {**environment_for_processes(tmp), "AGENTS_REDIS_PASSWORD": "old"}
        source = tmp / "in.jsonl"
        source.write_text("".join(f'{{"_id": {n}, "w": "w{n}"}}\n' for n in range(60)))
        out = tmp / "out.jsonl"
        with FakeLLM(limit) as server:
            command = (
                f"{BIN}/agents-map --base-url {server.url} --prompt '{{w}}' --rpm 300 "
                f"--rate-group {locked.url()} --resume {out} < {source} "
                f"| {BIN}/agents-write --append {out}"
            )
            running = subprocess.Popen(
                ["bash", "-o", "pipefail", "-c", command], stderr=subprocess.PIPE, env=env
            )
            deadline = time.monotonic() + 30
            while limit.answered < 5:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            admin = client.Redis(port=locked.port, password="old")
            admin.config_set("requirepass", "new")
            admin.client_kill_filter(_type="normal", skipme=True)
            status = running.wait(timeout=30)
            assert running.stderr is not None
            said = running.stderr.read().decode()
            assert status == 1, said
            assert "Redis refuses this process" in said and "AGENTS_REDIS_PASSWORD" in said
            kept = len(out.read_text().splitlines())
            assert 5 <= kept < 60
            assert "internal" not in out.read_text()  # (no record is blamed on a bug)
            again = subprocess.run(
                ["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True,
                env={**env, "AGENTS_REDIS_PASSWORD": "new"}, timeout=60,
            )  # fmt: skip
            assert again.returncode == 0, again.stderr
        ids = [json.loads(line)["_id"] for line in out.read_text().splitlines()]
        assert len(ids) == len(set(ids)) == 60
    finally:
        locked.stop()


@pytest.fixture
def certificate(tmp: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl, Debian's), and its key."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp / "redis.crt", tmp / "redis.key"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_rediss_with_tls(tmp: Path, certificate: tuple[Path, Path]) -> None:
    """rediss:// to a Redis with TLS: a certificate that is not trusted is a usage error that
    names SSL_CERT_FILE; trusted through it, the group works; redis:// (plain) to the same
    server and rediss:// to a plain one are never waited for forever."""
    if REDIS is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    pytest.importorskip("redis", reason="the redis client is not installed: agents[redis]")
    cert, key = certificate
    tls = Redis(tmp, arguments=("--tls-port", "--tls-cert-file", str(cert), "--tls-key-file",
                                str(key), "--tls-auth-clients", "no"))  # fmt: skip
    tls.start()
    plain = Redis(tmp)
    plain.start()
    try:
        secure = f"rediss://127.0.0.1:{tls.port}/tls"
        untrusted = run_map(tmp, secure, None)
        assert untrusted.returncode == 2, untrusted.stderr
        assert "TLS" in untrusted.stderr and "SSL_CERT_FILE" in untrusted.stderr
        mismatched = run_map(
            tmp, f"rediss://127.0.0.1:{plain.port}/tls", None, SSL_CERT_FILE=str(cert)
        )
        assert mismatched.returncode == 2 and "speaks redis://" in mismatched.stderr
        mismatched = run_map(tmp, f"redis://127.0.0.1:{tls.port}/tls", None)
        assert mismatched.returncode == 2 and "speaks rediss://" in mismatched.stderr
        limit = Limited(requests=20, window=2.0, headers=False)
        with FakeLLM(limit) as server:
            source = tmp / "in.jsonl"
            source.write_text("".join(f'{{"_id": {n}, "w": "w{n}"}}\n' for n in range(8)))
            env = {**environment_for_processes(tmp), "SSL_CERT_FILE": str(cert)}
            done = subprocess.run(
                [str(BIN / "agents-map"), "--base-url", server.url, "--prompt", "{w}",
                 "--rpm", "600", "--rate-group", secure],
                stdin=source.open("rb"), capture_output=True, text=True, env=env, timeout=60,
            )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert limit.answered == 8
    finally:
        tls.stop()
        plain.stop()


def test_redis_flushed_mid_run_keeps_the_limit(tmp: Path, redis: Redis) -> None:
    """A Redis that forgets the group while requests wait in its queue (FLUSHALL, or a restart
    without persistence between two of their questions): the waiting requests reserve again,
    instead of all going at once into the window that still counts what was sent."""
    import redis as client

    limit = Recorded(requests=20, window=2.0, headers=False)
    names = [f"f{k}x" for k in range(4)]
    with FakeLLM(limit) as server:
        members = [member(server, tmp, name, 25, 0, jobs=8, group=redis.url()) for name in names]
        admin = client.Redis(port=redis.port)
        for _ in range(40):  # (a bounded campaign: 4 s)
            time.sleep(0.1)
            admin.flushall()
        statuses = [process.wait(timeout=60) for process in members]
    assert statuses == [0, 0, 0, 0]
    assert limit.answered == 100 and limit.refused == 0
    assert limit.most_requests <= 20


def test_hosts_whose_clocks_disagree_share_the_budget(tmp: Path, redis: Redis) -> None:
    """Two members, one host's clock 30 s ahead: the group's times are on Redis's clock, so
    both get their share and together stay within the limit (on its own clock, the one behind
    would wait for the other's future)."""
    import threading

    from agents.map.limits import Budgets
    from agents.map.redis_group import RedisGroup

    sent: dict[str, list[float]] = {"ahead": [], "right": []}

    def send(name: str, skew: float) -> None:
        group = RedisGroup(redis.url("clocks"))
        group.local_clock = lambda: time.time() + skew
        budgets = Budgets(rpm=1200, tpm=None, group=group)  # 19.4 a second, used
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            wait = budgets.reserve(0.0)
            while wait > 0:
                time.sleep(wait)
                wait = budgets.still_to_wait()
            sent[name].append(time.monotonic())

    threads = [
        threading.Thread(target=send, args=("ahead", 30.0)),
        threading.Thread(target=send, args=("right", 0.0)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    times = sorted(sent["ahead"] + sent["right"])
    most = max(sum(t <= s < t + 1.0 for s in times) for t in times)
    assert most <= 20, most  # (19.4 a second, and the bucket's hundredth of a second)
    assert len(sent["ahead"]) >= 20 and len(sent["right"]) >= 20, {
        name: len(times) for name, times in sent.items()
    }


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


def test_what_waiting_cannot_fix_is_said_at_the_start(tmp: Path, redis: Redis) -> None:
    """Exit status 2 before anything is sent, the key left as it was: a key of the group's
    name that holds someone's data, a user without rights on it, a database Redis does not
    have, a server that is not Redis, a host that does not resolve, URLs of another shape."""
    import http.server
    import threading

    import redis as client

    admin = client.Redis(port=redis.port)
    admin.set("agents:rate-group:taken", "precious user data")
    admin.hset("agents:rate-group:hashed", "f", "v")
    admin.execute_command("ACL", "SETUSER", "bob", "on", ">bobs", "~other:*", "+@all")
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    here = f"127.0.0.1:{redis.port}"
    cases = {
        f"redis://{here}/taken": "holds something else",
        f"redis://{here}/hashed": "holds something else",
        f"redis://{here}/g?db=99": "?db=N",
        f"redis://127.0.0.1:{web.server_address[1]}/g": "other than Redis",
        "redis://no-such-host.invalid:6379/g": "does not resolve",
        f"redis://{here}/g#part": "NAME of letters",
        f"unix://{here}/g": "redis://HOST:PORT/NAME",
        f"redis:/{here}/g": "redis://HOST:PORT/NAME",
    }
    try:
        for group, says in cases.items():
            done = run_map(tmp, group, None)
            assert done.returncode == 2, (group, done.stderr)
            assert says in done.stderr, (group, done.stderr)
            assert "internal" not in done.stderr
        bob = run_map(tmp, f"redis://bob@{here}/g", "bobs")
        assert bob.returncode == 2 and "rights on agents:rate-group:g" in bob.stderr, bob.stderr
        certificates = run_map(tmp, f"rediss://{here}/g", None, SSL_CERT_FILE=str(tmp / "none"))
        assert certificates.returncode == 2 and "SSL_CERT_FILE" in certificates.stderr
    finally:
        web.shutdown()
        web.server_close()
    assert admin.get("agents:rate-group:taken") == b"precious user data"
    assert admin.ttl("agents:rate-group:taken") == -1  # (no expiry given to someone's key)
    upper = run_map(tmp, f"REDIS://{here}/g", None)  # (a scheme in capitals is a scheme)
    assert "rate-group" not in upper.stderr, upper.stderr


def test_a_clock_stepped_mid_run_is_measured_again(tmp: Path, redis: Redis) -> None:
    """A host whose clock is stepped during the run (NTP, by hand), 20 s either way: it is
    measured against Redis's again at once, so neither member stalls and together they stay
    within the limit (it was measured every 30 s: one member had the budget for 20 s)."""
    import threading

    from agents.map.limits import Budgets
    from agents.map.redis_group import RedisGroup

    for step in (20.0, -20.0):
        sent: dict[str, list[float]] = {"stepped": [], "steady": []}
        began = time.monotonic()

        def send(
            name: str,
            step: float = step,
            sent: dict[str, list[float]] = sent,
            began: float = began,
        ) -> None:
            group = RedisGroup(redis.url(f"steps{int(step)}"))
            if name == "stepped":  # (the clock jumps 1.5 s in)
                group.local_clock = lambda: (
                    time.time() + (step if time.monotonic() - began > 1.5 else 0)
                )
            budgets = Budgets(rpm=1200, tpm=None, group=group)  # 19.4 a second, used
            while time.monotonic() - began < 4.0:
                wait = budgets.reserve(0.0)
                while wait > 0:
                    time.sleep(wait)
                    wait = budgets.still_to_wait()
                sent[name].append(time.monotonic())

        threads = [threading.Thread(target=send, args=(name,)) for name in sent]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        times = sorted(sent["stepped"] + sent["steady"])
        most = max(sum(t <= s < t + 1.0 for s in times) for t in times)
        assert most <= 20, (step, most)
        after = {name: sum(t - began > 2.0 for t in each) for name, each in sent.items()}
        assert all(count >= 12 for count in after.values()), (step, after)  # ~19 each
