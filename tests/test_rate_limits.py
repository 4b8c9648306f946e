"""Rate limits at full speed: budgets under a provider's limits, limits learned from headers,
one budget for many processes, and spending caps (exit 4, resumable)."""

from __future__ import annotations

import fcntl
import io
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import BIN, Result
from fake_llm import FakeLLM, Limited, Reply, echo, last_user_message
from test_map import KEY, Sleeps, words

from agents.cli import map as map_cli
from agents.cli._run import Streams


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch, tmp: Path) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("AGENTS_RUNTIME_DIR", str(tmp / "runtime"))


def run(server: FakeLLM, *argv: str, stdin: bytes, backoff: bool = False) -> Result:
    """agents-map in-process; its backoff waits return at once unless ``backoff``."""
    out, err = io.BytesIO(), io.StringIO()
    status = map_cli.main(
        ["--base-url", server.url, "-q", "--prompt", "{word}", *argv],
        Streams(stdin=io.BytesIO(stdin), stdout=out, stderr=err),
        sleep=None if backoff else Sleeps(),
    )
    return Result(status, out.getvalue(), err.getvalue())


def test_rpm_just_under_the_limit_gets_no_429() -> None:
    limit = Limited(requests=10, window=1.0, headers=False)
    with FakeLLM(limit) as server:
        started = time.monotonic()
        result = run(server, "--rpm", "570", "-j", "8", stdin=words(30))
        elapsed = time.monotonic() - started
    assert result.status == 0, result.stderr
    assert (limit.refused, limit.answered) == (0, 30)
    assert limit.most_requests <= 10
    assert elapsed >= 30 / 9.5 - 1.5  # the budget, not luck, kept it under


def test_tpm_just_under_the_limit_gets_no_429() -> None:
    limit = Limited(tokens=200, window=1.0, headers=False)
    with FakeLLM(limit) as server:
        result = run(
            server, "--tpm", str(0.95 * 200 * 60), "--max-tokens", "10", "-j", "8", stdin=words(40)
        )
    assert result.status == 0, result.stderr
    assert (limit.refused, limit.answered) == (0, 40)
    assert limit.most_tokens <= 200


def test_limits_learned_from_headers() -> None:
    limit = Limited(requests=10, window=1.0, headers=True)
    with FakeLLM(limit) as server:
        result = run(server, "-j", "8", "--retry-delay", "0.05", stdin=words(40))
    assert result.status == 0, result.stderr
    assert limit.answered == 40
    assert limit.refused <= 3  # at most the start, before the first headers arrived


def environment_for_processes(tmp: Path) -> dict[str, str]:
    python_bin = os.path.dirname(sys.executable)
    return {
        **os.environ,
        "AGENTS_RUNTIME_DIR": str(tmp / "runtime"),
        "PATH": os.pathsep.join([str(BIN), python_bin, os.environ["PATH"]]),
    }


def member(
    server: FakeLLM,
    tmp: Path,
    name: str,
    count: int,
    first: int,
    rpm: str = "570",
    jobs: int = 4,
    group: str = "shared",
) -> subprocess.Popen[bytes]:
    source = tmp / f"{name}.jsonl"
    source.write_bytes(
        b"".join(
            orjson.dumps({"_id": f"{name}-{n}", "word": f"{name}{n}"}) + b"\n"
            for n in range(first, first + count)
        )
    )
    return subprocess.Popen(
        [
            str(BIN / "agents-map"),
            "--base-url",
            server.url,
            "--prompt",
            "{word}",
            "-q",
            "--rpm",
            rpm,
            "--rate-group",
            group,
            "-j",
            str(jobs),
        ],
        stdin=source.open("rb"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=environment_for_processes(tmp),
    )


# The group tests count over two-second windows: 3 % of margin is then 60 ms, more than a
# loaded machine delays a request between two processes and the server's thread (over a
# one-second window at 10 a second one request in 40 was refused in CI). The one-second
# window is the single process's test above, where nothing else competes.


def test_four_processes_share_one_budget(tmp: Path) -> None:
    limit = Limited(requests=20, window=2.0, headers=False)  # 600 a minute
    with FakeLLM(limit) as server:
        members = [member(server, tmp, f"p{k}", 15, 0) for k in range(4)]
        statuses = [process.wait(timeout=60) for process in members]
    assert statuses == [0, 0, 0, 0]
    assert limit.answered == 60
    assert limit.refused == 0
    assert limit.most_requests <= 20


def test_members_that_give_different_limits_keep_the_smallest(tmp: Path) -> None:
    limit = Limited(requests=20, window=2.0, headers=False)  # 600 a minute
    with FakeLLM(limit) as server:
        # The one with the real limit first: a member keeps the smallest limit of the members
        # it has heard from, and cannot keep one it has not heard of yet.
        members = [member(server, tmp, "right", 20, 0, rpm="600")]
        started = time.monotonic()
        while limit.answered == 0:
            assert time.monotonic() - started < 20, "the first member sent nothing"
            time.sleep(0.01)
        members.append(member(server, tmp, "wrong", 20, 0, rpm="2400"))
        statuses = [process.wait(timeout=60) for process in members]
    assert statuses == [0, 0]
    assert (limit.refused, limit.answered) == (0, 40)
    assert limit.most_requests <= 20


class Recorded(Limited):
    """A limit that also records when each member's requests were taken (the member's name
    starts the word)."""

    def __init__(self, delay: float = 0.0, **limits: Any) -> None:
        super().__init__(**limits)
        self.delay = delay  # of each answer
        self.taken: list[tuple[float, str]] = []

    def __call__(self, request: dict[str, Any], number: int) -> Reply:
        reply = super().__call__(request, number)
        if reply.status == 200:
            self.taken.append((time.monotonic(), last_user_message(request).rstrip("0123456789")))
            reply.delay = self.delay
        return reply

    def shares(self, names: list[str]) -> tuple[float, dict[str, int]]:
        """From when every member was sending until the first one finished: how long that was,
        and each member's requests taken in it."""
        began = max(min(t for t, name in self.taken if name == who) for who in names)
        ended = min(max(t for t, name in self.taken if name == who) for who in names)
        counts = {
            who: sum(began <= t <= ended and name == who for t, name in self.taken) for who in names
        }
        return ended - began, counts


@pytest.mark.parametrize("jobs", [(2, 32), (1, 8, 16)])
def test_members_with_unequal_concurrency_get_equal_shares(
    tmp: Path, jobs: tuple[int, ...]
) -> None:
    """Each member wants far more than the group's 20 a second (the server answers at once);
    while all of them run, each gets an equal share within 10 %, whatever its -j."""
    limit = Recorded(requests=40, window=2.0, headers=False)  # two-second windows: see above
    names = [f"m{k}x" for k in range(len(jobs))]
    with FakeLLM(limit) as server:
        members = [
            member(server, tmp, name, 60, 0, rpm="1200", jobs=j)
            for name, j in zip(names, jobs, strict=True)
        ]
        statuses = [process.wait(timeout=90) for process in members]
    assert statuses == [0] * len(jobs)
    assert limit.refused == 0 and limit.most_requests <= 40
    seconds, counts = limit.shares(names)
    assert seconds > 3.0
    equal = sum(counts.values()) / len(names)
    assert all(abs(count - equal) <= 0.1 * equal for count in counts.values()), counts


def test_a_member_whose_jobs_barely_cover_its_share_still_gets_it(tmp: Path) -> None:
    """Answers take 0.15 s: a -j 2 member could send 13 a second, a little more than its
    equal share of the group's 20, beside a -j 32 member that wants far more. Each of its
    requests waits for at most the other's one already booked, so it gets an equal share
    within 10 %, and the two use the whole budget. (This held before members that spent less
    went first too: it guards the queue's reordering, which must not starve either.)"""
    # Two-second windows (see above): over one second, CI refused 1 request of 180 once.
    limit = Recorded(delay=0.15, requests=40, window=2.0, headers=False)
    names = ["m0x", "m1x"]
    with FakeLLM(limit) as server:
        members = [
            member(server, tmp, name, 90, 0, rpm="1200", jobs=jobs)
            for name, jobs in zip(names, (2, 32), strict=True)
        ]
        statuses = [process.wait(timeout=90) for process in members]
    assert statuses == [0, 0]
    assert limit.refused == 0 and limit.most_requests <= 40
    seconds, counts = limit.shares(names)
    assert seconds > 3.0
    equal = sum(counts.values()) / len(names)
    assert all(abs(count - equal) <= 0.1 * equal for count in counts.values()), counts
    assert sum(counts.values()) / seconds >= 0.9 * 20 * 0.97, counts  # and the whole budget


def test_a_member_killed_holding_the_lock_does_not_stop_the_others(tmp: Path) -> None:
    from agents.map.limits import group_file

    os.environ["AGENTS_RUNTIME_DIR"] = str(tmp / "runtime")
    path = group_file("shared")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time\n"
            f"f = open({path!r}, 'a+')\n"
            "fcntl.flock(f, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == b"locked"
    limit = Limited(requests=10, window=1.0, headers=False)
    with FakeLLM(limit) as server:
        members = [member(server, tmp, f"q{k}", 10, 0) for k in range(2)]
        time.sleep(0.7)
        assert limit.answered == 0  # blocked by the holder's lock
        killed = time.monotonic()
        holder.kill()
        holder.wait()
        while limit.answered == 0:
            assert time.monotonic() - killed < 1.0, "the budget stayed locked"
            time.sleep(0.01)
        assert [process.wait(timeout=60) for process in members] == [0, 0]
    assert limit.answered == 20
    with open(path) as stream:  # and the lock is free again
        fcntl.flock(stream, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_max_cost_stops_within_one_request_and_resumes(tmp: Path) -> None:
    limit = Limited(headers=False)
    output = tmp / "out.jsonl"
    # $1,000 per million tokens both ways: each request costs about $0.01
    common = [
        "--price",
        "1000,1000",
        "--max-tokens",
        "5",
        "-j",
        "1",
        "--resume",
        str(output),
        "--stats",
        str(tmp / "stats.json"),
    ]
    with FakeLLM(limit) as server:
        first = run(server, *common, "--max-cost", "0.1", stdin=words(30))
        assert first.status == 4, first.stderr
        output.write_bytes(first.stdout)
        stats = orjson.loads((tmp / "stats.json").read_bytes())
        per_request = stats["cost_usd"] / limit.answered
        assert stats["cost_usd"] <= 0.1
        assert 0.1 - stats["cost_usd"] <= per_request * 1.01  # within one request of the cap
        assert "stopped at a cap: --max-cost $0.1" in first.stderr
        answered = limit.answered
        again = run(server, *common, stdin=words(30))
        assert again.status == 0, again.stderr
        assert limit.answered == 30  # nothing asked twice
        assert len(again.records) == 30 - answered  # only what the first run had not done


def test_max_cost_needs_a_price() -> None:
    with FakeLLM(echo) as server:
        result = run(server, "--model", "unpriced", "--max-cost", "5", stdin=words(1))
    assert result.status == 2
    assert result.stderr.startswith(
        "agents-map: error: --max-cost needs a price, and there is none for unpriced"
    )


@pytest.mark.parametrize("cap", ["3", "20%"])
def test_max_errors_stops_with_exit_4(cap: str) -> None:
    def script(request: dict[str, object], number: int) -> Reply:
        word = last_user_message(request)  # type: ignore[arg-type]
        return Reply("bad", status=400) if int(word[1:]) % 2 else Reply("ok")

    with FakeLLM(script) as server:
        result = run(server, "--max-errors", cap, "-j", "1", stdin=words(100))
    assert result.status == 4, result.stderr
    failed = [r for r in result.records if "error" in r]
    assert 3 <= len(failed) < 50
    assert "stopped at a cap: --max-errors" in result.stderr


def test_dry_run_estimates_the_time_under_the_limits() -> None:
    out, err = io.BytesIO(), io.StringIO()
    with FakeLLM(echo) as server:
        status = map_cli.main(
            ["--base-url", server.url, "--prompt", "{word}", "--dry-run", "--rpm", "60"],
            Streams(stdin=io.BytesIO(words(120)), stdout=out, stderr=err),
        )
        assert server.requests == []
    assert status == 0
    # 97 % of the limit is used: 120 requests at 58.2 a minute
    assert "Estimated time at --rpm 60: 2m 4s" in err.getvalue()
    quiet = run(server, "--dry-run", "--rpm", "60", stdin=words(120))  # -q: the requests only
    assert (quiet.stderr, len(quiet.records)) == ("", 120)


def test_rate_group_names_are_checked() -> None:
    with FakeLLM(echo) as server:
        result = run(server, "--rate-group", "../x", stdin=words(1))
    assert result.status == 2


class Ticking(Limited):
    """A limit on a server with ``slots`` that hands out its answers together, every ``tick``
    seconds (as a batching server does); a request beyond its slots is refused with a 503,
    which the limit does not count."""

    def __init__(self, tick: float, slots: int, **limits: Any) -> None:
        super().__init__(**limits)
        self.tick, self.slots = tick, slots
        self.answers: list[float] = []  # when each accepted request is answered
        self.busy = 0

    def __call__(self, request: dict[str, Any], number: int) -> Reply:
        with self.lock:
            now = time.monotonic()
            self.answers = [t for t in self.answers if t > now]
            if len(self.answers) >= self.slots:
                self.busy += 1
                return Reply("busy", status=503)
        reply = super().__call__(request, number)
        if reply.status == 200:
            reply.delay = self.tick - now % self.tick
            with self.lock:
                self.answers.append(now + reply.delay)
        return reply


def test_answers_that_return_together_do_not_send_a_burst() -> None:
    """A 40-slot server answers together every 4 s, under a limit of 20 in any second: -j 100
    brings the window down to its slots, so requests wait for one. Requests that took their
    budget before waiting for a slot went out together when the answers freed the slots (28
    in a second, 8 refused, in each of three runs); taking the slot first keeps the budget's
    spacing on the wire."""
    limit = Ticking(tick=4.0, slots=40, requests=20, window=1.0, headers=False)
    with FakeLLM(limit) as server:
        result = run(server, "--rpm", "1200", "-j", "100", stdin=words(150), backoff=True)
    assert result.status == 0, result.stderr
    assert limit.answered == 150
    # 8 in each of three runs before the fix; after it 0 in five runs of six and 1 in one,
    # cause not found (the client was never more than 3.2 ms late on its budget, where 31 ms
    # would be needed; the server shares this process's interpreter, and its clock with it).
    assert limit.refused <= 1


def test_limits_learned_by_an_earlier_run_hold_from_the_first_request() -> None:
    limits = {"now": Limited(requests=10, window=1.0, headers=True)}
    with FakeLLM(lambda request, number: limits["now"](request, number)) as server:
        first = run(server, "-j", "8", "--retry-delay", "0.05", stdin=words(20))
        assert first.status == 0, first.stderr
        assert limits["now"].answered == 20
        time.sleep(1.1)  # the server's window empties
        limits["now"] = Limited(requests=10, window=1.0, headers=True)
        again = run(server, "-j", "20", "--retry-delay", "0.05", stdin=words(20))
    assert again.status == 0, again.stderr
    # the same endpoint: the limit is known before the first answer, so no burst of 20 at once
    assert (limits["now"].refused, limits["now"].answered) == (0, 20)


@pytest.mark.parametrize("window", [0.25, 0.5, 1.0])
def test_the_providers_real_limit_given_as_is_is_never_passed(window: float) -> None:
    # 5 requests in any sliding window of `window` seconds, and --rpm says exactly that
    limit = Limited(requests=5, window=window, headers=False)
    per_minute = 5 * 60 / window
    with FakeLLM(limit) as server:
        result = run(server, "--rpm", f"{per_minute:g}", "-j", "8", stdin=words(40))
    assert result.status == 0, result.stderr
    assert (limit.refused, limit.answered) == (0, 40)
    assert limit.most_requests <= 5


def test_the_providers_real_token_limit_given_as_is_is_never_passed() -> None:
    limit = Limited(tokens=200, window=0.5, headers=False)
    with FakeLLM(limit) as server:
        result = run(
            server, "--tpm", str(200 * 120), "--max-tokens", "10", "-j", "8", stdin=words(40)
        )
    assert result.status == 0, result.stderr
    assert limit.answered == 40
    # Each request is 14 tokens and the budget refills 194 (97 %) every 0.5 s, so 14 requests
    # fit a window and the 15th is sent 5 ms after the first one's window ends: a first request
    # that reaches the in-process server one GIL switch (5 ms) late is still counted then, and
    # the 15th is refused and sent again (a 429 is not billed). A rate that does not know the
    # window cannot leave more room; 0 refused in most runs, 1 in one CI run.
    assert limit.refused <= 1
    assert limit.most_tokens <= 200


def a_token_a_character(request: dict[str, Any]) -> int:
    """A server whose tokenizer counts a token a character (four times agents-map's rule of
    thumb: text in Chinese, or a tokenizer trained on other languages)."""
    prompt = sum(len(m["content"]) + 4 for m in request["messages"])
    return prompt + int(request.get("max_tokens") or 5)


@pytest.mark.parametrize("delay", [0.0, 0.5])
def test_a_server_that_counts_more_tokens_than_estimated_is_not_passed(delay: float) -> None:
    """The budget learns from the answers' usage how the server counts, and reserves that:
    charged only once answered, the tokens of the requests in flight were counted at a quarter
    of their size."""
    limit = Recorded(delay=delay, tokens=600, window=1.0, headers=False, count=a_token_a_character)
    with FakeLLM(limit) as server:
        result = run(
            server,
            *("--tpm", str(600 * 60), "--max-tokens", "10", "-j", "16"),
            *("--system", "Answer with one word, in the language of the question."),
            stdin=words(60),
            backoff=True,
        )
    assert result.status == 0, result.stderr
    assert (limit.refused, limit.answered) == (0, 60)
    assert limit.most_tokens <= 600


def test_a_limit_that_changed_since_it_was_learned_is_followed(tmp: Path) -> None:
    # Counted over two-second windows, as the group tests are (see there): over one second at
    # 20 a second, 3 % of margin is 31 ms, and CI once refused one request of 60.
    limits = {"now": Limited(requests=20, window=2.0, headers=True)}  # 600 a minute
    with FakeLLM(lambda request, number: limits["now"](request, number)) as server:
        assert run(server, "-j", "8", stdin=words(20)).status == 0
        time.sleep(2.1)
        limits["now"] = Limited(requests=40, window=2.0, headers=True)  # the provider raised it
        again = run(server, "-j", "20", stdin=words(60))
    assert again.status == 0, again.stderr
    assert limits["now"].refused == 0
    remembered = [
        orjson.loads(path.read_bytes()) for path in (tmp / "runtime").rglob("limits-*.json")
    ]
    assert remembered == [{"requests": 1200.0}]  # the new limit, for the next run


def test_a_group_file_keeps_a_debt_when_its_rate_changes() -> None:
    """A group's bucket that changes rate (a limit learned anew, a member with a smaller one)
    counts the time before at the old rate and keeps its debt in requests, paid off at the new
    rate."""
    from agents.map.limits import _shared_bucket

    now = time.time()
    bucket = _shared_bucket({"level": -10.0, "updated": now - 0.5, "rate": 10.0}, 5.0, now)
    assert bucket.rate == 5.0
    assert -5.05 <= bucket.level <= -4.95  # half a second at 10 a second paid off 5 of 10
    older = _shared_bucket({"level": -10.0, "updated": now - 0.5}, 5.0, now)  # from before
    assert (older.rate, older.level) == (5.0, -10.0)  # no rate kept: the new one, from now


def test_a_learned_limit_that_changes_keeps_the_debt_in_requests() -> None:
    """The same rule in one process as in a group file: a bucket whose learned limit changes
    keeps its debt as many requests as it was (safe whichever way the limit moved)."""
    from agents.map.limits import Budgets

    budgets = Budgets(None, None)
    budgets.set_rate("requests", 6000)  # 97 a second
    for _ in range(20):
        budgets.reserve(0)
    debt = budgets.local["requests"].level
    assert debt < -15
    budgets.set_rate("requests", 600)  # the server lowered it: 9.7 a second
    bucket = budgets.local["requests"]
    assert bucket.rate == pytest.approx(600 * 0.97 / 60)
    assert debt <= bucket.level <= debt + 1  # in requests, not rescaled to the new rate
    assert budgets.reserve(0) >= (-bucket.level) / bucket.rate - 0.2


class TokensTaken(Limited):
    """A limit that records the tokens it took of each member (the word's first letter)."""

    def __init__(self, **limits: Any) -> None:
        super().__init__(**limits)
        self.taken: list[tuple[float, str, int]] = []

    def __call__(self, request: dict[str, Any], number: int) -> Reply:
        reply = super().__call__(request, number)
        if reply.status == 200:
            word = last_user_message(request)
            self.taken.append((time.monotonic(), word[0], self.count(request)))
        return reply


def test_members_with_unequal_prompts_get_equal_shares_of_the_tokens(tmp: Path) -> None:
    """Under a tokens-per-minute limit, a member whose prompts are ten times longer gets an
    equal share of the tokens within 10 % (not of the requests: served in turn, the short
    member got a tenth of the tokens, 649 against 6,431), and the two use the whole budget."""
    limit = TokensTaken(tokens=4000, window=4.0, headers=False)  # 60,000 a minute
    members = []
    with FakeLLM(limit) as server:
        for name, count, size in (("s", 600, 8), ("l", 60, 400)):
            source = tmp / f"{name}.jsonl"
            source.write_bytes(
                b"".join(
                    orjson.dumps({"_id": n, "word": name + f"{n}".rjust(size, "x")}) + b"\n"
                    for n in range(count)
                )
            )
            members.append(
                subprocess.Popen(
                    [
                        *(str(BIN / "agents-map"), "--base-url", server.url, "-q"),
                        *("--prompt", "{word}", "--max-tokens", "5", "--tpm", "60000"),
                        *("--rate-group", "tokens", "-j", "8"),
                    ],
                    stdin=source.open("rb"),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    env=environment_for_processes(tmp),
                )
            )
        statuses = [process.wait(timeout=120) for process in members]
    assert statuses == [0, 0], [p.stderr.read() for p in members if p.stderr]
    assert limit.refused == 0 and limit.most_tokens <= 4000
    began = max(min(t for t, name, _ in limit.taken if name == who) for who in "sl")
    ended = min(max(t for t, name, _ in limit.taken if name == who) for who in "sl")
    assert ended - began > 3.0
    tokens = {
        who: sum(cost for t, name, cost in limit.taken if began <= t <= ended and name == who)
        for who in "sl"
    }
    equal = sum(tokens.values()) / 2  # the spec's ±10 % of an equal share (47-53 % here)
    assert all(abs(share - equal) <= 0.1 * equal for share in tokens.values()), tokens
    assert sum(tokens.values()) / (ended - began) >= 0.9 * 1000 * 0.97, tokens


@pytest.mark.parametrize("large", [514, 2000])
def test_a_member_with_large_requests_gets_no_more_than_its_share(large: int) -> None:
    """The group's queue on a simulated clock: two members that always want more, one with
    requests of 24 tokens and one with requests 20 or 80 times larger, under 970 tokens a
    second. Each gets an equal share of the tokens within 10 %. (Ordered by what each had
    spent before its request, the large one went twice in a row whenever it was a little
    behind: 115 % and 140 % of an equal share.)"""
    import heapq

    from agents.map import limits

    bucket = limits.Bucket(970.0)
    members: dict[str, dict[str, float]] = {"small": {}, "large": {}}
    queue: list[limits.Entry] = []
    cost = {"small": 24.0, "large": float(large)}

    def as_member(name: str, now: float) -> limits._Shared:
        return limits._Shared({"tokens": bucket}, now, members, queue, group=True, me=name)

    def reserve(name: str, now: float) -> float:
        shared = as_member(name, now)
        wait = shared.reserve(cost[name])
        queue[:] = shared.queue
        return now + wait

    events = [(reserve(name, 0.0), name) for name in cost]
    heapq.heapify(events)
    taken = dict.fromkeys(cost, 0.0)
    while events:
        now, name = heapq.heappop(events)
        if now > 300.0:
            break
        shared = as_member(name, now)
        wait = shared.still_to_wait(cost[name])
        queue[:] = shared.queue
        if wait > limits.ON_TIME:
            heapq.heappush(events, (now + wait, name))
            continue
        if now > 30.0:  # once both have been at it a while
            taken[name] += cost[name]
        heapq.heappush(events, (reserve(name, now), name))
    equal = sum(taken.values()) / 2
    assert sum(taken.values()) >= 0.99 * 970 * 270  # the whole budget
    assert all(abs(share - equal) <= 0.1 * equal for share in taken.values()), taken
