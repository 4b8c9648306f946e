"""agents-map --batch (issue 17) against a fake Batch API (tests/fake_batch.py): no local server
offers one, so these runs are the only proof of batch mode here. They run the real command in a
real process, so crashes are real (a SIGKILL at a named point, through AGENTS_BATCH_CRASH)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import BIN, jsonl
from fake_batch import FakeBatchAPI, completion, echo

PROMPT = "Say {word}"


def words(count: int, start: int = 1) -> bytes:
    return jsonl(*({"_id": n, "word": f"w{n}"} for n in range(start, start + count)))


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(folder))
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.delenv("AGENTS_BATCH_CRASH", raising=False)
    return folder


def batch_map(
    api: FakeBatchAPI, *args: str, stdin: bytes, crash: str | None = None, prompt: str = PROMPT
) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ)
    if crash:
        env["AGENTS_BATCH_CRASH"] = crash
    command = [
        str(BIN / "agents-map"), "--batch", "--base-url", api.url, "-m", "gpt-4o-mini",
        "--prompt", prompt, "--batch-poll", "0.01", *args,
    ]  # fmt: skip
    return subprocess.run(command, input=stdin, capture_output=True, env=env, timeout=120)


def records(done: subprocess.CompletedProcess[bytes]) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in done.stdout.splitlines() if line.strip()]


def by_id(found: list[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    return {record["_id"]: record for record in found}


def test_results_match_the_online_mode_up_to_order(state: Path) -> None:
    from fake_llm import FakeLLM

    with FakeBatchAPI() as api:
        done = batch_map(api, stdin=words(40))
    assert done.returncode == 0, done.stderr.decode()
    with FakeLLM() as server:
        online = subprocess.run(
            [str(BIN / "agents-map"), "--base-url", server.url, "-m", "gpt-4o-mini",
             "--prompt", PROMPT, "-q"],
            input=words(40), capture_output=True, check=True,
        )  # fmt: skip
    ours, theirs = records(done), records(online)
    assert [r["_id"] for r in ours] == list(range(1, 41))  # input order, though lines came shuffled
    assert sorted(ours, key=lambda r: r["_id"]) == sorted(theirs, key=lambda r: r["_id"])
    assert sorted(api.submitted, key=int) == [str(n) for n in range(1, 41)]
    # the request lines are the online requests, exactly
    line = orjson.loads(api.files_seen[0].splitlines()[0])
    assert line["custom_id"] == "1" and line["url"] == "/v1/chat/completions"
    assert line["body"] == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Say w1"}],
    }
    stderr = done.stderr.decode()
    assert "submitted batch_1: 40 requests" in stderr and "completed, 40 of 40 done" in stderr
    assert not api.files  # the input, output files deleted on the server once kept here


def test_a_finished_job_run_again_writes_its_results_again_without_a_request(
    state: Path,
) -> None:
    """The reader of the first run's results may have lost them (a full disk): the job's
    folder keeps them a week; then it is removed."""
    from agents.batch.state import KEEP_FINISHED_SECONDS, remove_finished

    with FakeBatchAPI() as api:
        first = batch_map(api, stdin=words(5))
        calls = len(api.batches), api.uploads
        again = batch_map(api, stdin=words(5))
        assert again.returncode == 0, again.stderr.decode()
        assert records(again) == records(first)
        assert (len(api.batches), api.uploads) == calls
    home = state / "agents" / "batches"
    (folder,) = home.iterdir()
    remove_finished(home, now=time.time() + KEEP_FINISHED_SECONDS / 2)
    assert folder.exists()
    journal = folder / "journal.jsonl"
    os.utime(journal, (time.time() - KEEP_FINISHED_SECONDS - 10,) * 2)
    remove_finished(home, now=time.time() + KEEP_FINISHED_SECONDS + 60)
    assert not folder.exists()


def test_lines_that_fail_become_error_records_of_their_type(state: Path) -> None:
    def answer(body: dict[str, Any], custom_id: str) -> tuple[int, dict[str, Any]]:
        if custom_id in ("3", "7"):
            return 400, {"error": {"message": "bad request: no such parameter", "type": "x"}}
        return echo(body, custom_id)

    stats = state.parent / "stats.json"
    with FakeBatchAPI(answer) as api:
        done = batch_map(api, "--stats", str(stats), "--price", "2,8", stdin=words(10))
    assert done.returncode == 3, done.stderr.decode()
    document = orjson.loads(stats.read_bytes())
    assert (document["mode"], document["succeeded"], document["failed"]) == ("batch", 8, 2)
    assert document["errors"] == {"bad_request": 2} and document["requests"] == 10
    (only,) = document["batches"]
    assert only["status"] == "completed" and only["requests"] == {
        "total": 10, "completed": 8, "failed": 2,
    }  # fmt: skip
    # 8 answers of 10 + 5 tokens at half of $2 and $8 a million
    assert document["cost_usd"] == pytest.approx(8 * (10 * 1 + 5 * 4) / 1e6)
    found = by_id(records(done))
    assert sorted(found) == list(range(1, 11))
    assert found[3]["error_type"] == "bad_request" and "no such parameter" in found[3]["error"]
    assert found[3]["item"] == {"_id": 3, "word": "w3"}
    assert found[4]["result"] == "answer: Say w4"
    assert Counter(api.submitted) == Counter(str(n) for n in range(1, 11))  # 400: not retried


@pytest.mark.parametrize("fate", ["failed", "expired"])
def test_a_failed_or_expired_batch_is_retried_in_a_new_one(state: Path, fate: str) -> None:
    with FakeBatchAPI(fate=lambda number: fate if number == 1 else "completed") as api:
        done = batch_map(api, stdin=words(10))
    assert done.returncode == 0, done.stderr.decode()
    assert sorted(by_id(records(done))) == list(range(1, 11))
    assert len(api.batches) == 2
    first, second = (api.batches[f"batch_{n}"] for n in (1, 2))
    retried = {line["custom_id"] for line in second.lines}
    if fate == "failed":  # nothing of it ran: all of it again
        assert retried == {str(n) for n in range(1, 11)}
        assert "failed as a whole: Enqueued token limit reached" in done.stderr.decode()
    else:  # half ran: the other half again
        assert retried == {line["custom_id"] for line in first.lines[5:]}


def test_retries_stop_at_max_retries_with_the_error_type(state: Path) -> None:
    stats = state.parent / "stats.json"
    with FakeBatchAPI(fate=lambda number: "expired", expired_share=0.5) as api:
        done = batch_map(api, "--max-retries", "1", "--stats", str(stats), stdin=words(4))
    assert done.returncode == 3
    assert orjson.loads(stats.read_bytes())["retries"] == {"batch_expired": 2}
    found = by_id(records(done))
    assert sum("result" in r for r in found.values()) == 3  # 2 in the first, 1 in the retry
    failed = [r for r in found.values() if "error" in r]
    assert len(failed) == 1 and failed[0]["error_type"] == "batch_expired"
    assert failed[0]["attempts"] == 2


def test_an_input_over_50000_requests_is_split(state: Path) -> None:
    with FakeBatchAPI(steps=1) as api:
        done = batch_map(api, "-q", stdin=words(50_001))
    assert done.returncode == 0, done.stderr.decode()
    assert [len(b.lines) for b in api.batches.values()] == [50_000, 1]
    assert len(done.stdout.splitlines()) == 50_001


@pytest.mark.parametrize("point", ["after-upload", "after-create", "while-polling", "after-emit"])
def test_a_crash_at_any_step_then_the_same_command_submits_nothing_twice(
    state: Path, point: str
) -> None:
    with FakeBatchAPI() as api:
        crashed = batch_map(api, stdin=words(12), crash=point)
        assert crashed.returncode == -signal.SIGKILL
        again = batch_map(api, stdin=words(12))
        assert again.returncode == 0, again.stderr.decode()
        assert len(api.batches) == 1
        assert Counter(api.submitted) == Counter(str(n) for n in range(1, 13))  # each once
        assert sorted(by_id(records(again))) == list(range(1, 13))
        if point == "after-create":
            assert api.uploads == 1  # found on the server by its metadata, not made again


def test_detach_then_collect(state: Path) -> None:
    with FakeBatchAPI() as api:
        detached = batch_map(api, "--batch-detach", stdin=words(6))
        assert detached.returncode == 4, detached.stderr.decode()
        assert "batch_1" in detached.stderr.decode() and not detached.stdout
        collected = batch_map(api, stdin=words(6))
        assert collected.returncode == 0, collected.stderr.decode()
        assert sorted(by_id(records(collected))) == list(range(1, 7))
        assert len(api.batches) == 1 and len(api.submitted) == 6


def test_max_cost_submits_what_fits_and_a_higher_cap_the_rest(state: Path) -> None:
    # $1,000 a million tokens both ways, half in batch: "Say wN" is 5 tokens, plus 20 answer
    # tokens allowed: 25 tokens, $0.0125 at the batch price: three fit under $0.04.
    price = ["--price", "1000,1000", "--max-tokens", "20"]
    with FakeBatchAPI() as api:
        capped = batch_map(api, *price, "--max-cost", "0.04", stdin=words(5))
        assert capped.returncode == 4, capped.stderr.decode()
        assert (
            len(records(capped)) == 3 and "2 records were not submitted" in capped.stderr.decode()
        )
        rest = batch_map(api, *price, "--max-cost", "1", stdin=words(5))
        assert rest.returncode == 0, rest.stderr.decode()
        assert sorted(by_id(records(capped) + records(rest))) == list(range(1, 6))
        assert Counter(api.submitted) == Counter(str(n) for n in range(1, 6))


def test_dry_run_shows_the_batches_and_the_cost_at_the_batch_price(state: Path) -> None:
    with FakeBatchAPI() as api:
        done = batch_map(api, "--dry-run", "--price", "2,8", stdin=words(3))
        assert done.returncode == 0, done.stderr.decode()
        assert not api.batches and not api.files
    lines = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert [line["custom_id"] for line in lines] == ["1", "2", "3"]
    stderr = done.stderr.decode()
    assert "Would submit 3 requests in 1 batch" in stderr and "at the batch price" in stderr


def test_a_server_without_the_batch_api_gets_a_clear_error(state: Path) -> None:
    with FakeBatchAPI(batches_route=False) as api:
        done = batch_map(api, stdin=words(3))
    assert done.returncode == 2
    assert "no Batch API" in done.stderr.decode() and "without --batch" in done.stderr.decode()


def test_batch_retry_online_answers_the_expired_lines_online(state: Path) -> None:
    with FakeBatchAPI(fate=lambda number: "expired", expired_share=0.5) as api:
        done = batch_map(api, "--batch-retry", "online", stdin=words(8))
    assert done.returncode == 0, done.stderr.decode()
    assert sorted(by_id(records(done))) == list(range(1, 9))
    assert len(api.batches) == 1 and len(api.online) == 4


def test_an_answer_that_does_not_parse_is_reasked_in_a_new_batch(state: Path) -> None:
    def answer(body: dict[str, Any], custom_id: str) -> tuple[int, dict[str, Any]]:
        if len(body["messages"]) == 1 and custom_id == "2":
            return 200, completion("not json at all")
        return 200, completion('{"ok": true}')

    with FakeBatchAPI(answer) as api:
        done = batch_map(api, "--output-format", "json", stdin=words(3))
    assert done.returncode == 0, done.stderr.decode()
    assert by_id(records(done))[2]["result"] == {"ok": True}
    reasked = api.batches["batch_2"].lines
    assert [line["custom_id"] for line in reasked] == ["2"]
    assert [m["role"] for m in reasked[0]["body"]["messages"]] == ["user", "assistant", "user"]


def test_resume_through_agents_write_pays_for_nothing_again(state: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    source = tmp_path / "in.jsonl"
    source.write_bytes(words(10))
    with FakeBatchAPI() as api:
        pipeline = (
            f"{BIN}/agents-map --batch --base-url {api.url} -m gpt-4o-mini --prompt '{PROMPT}' "
            f"--batch-poll 0.01 --resume {out} < {source} | {BIN}/agents-write --append {out}"
        )
        # the writer is killed as the results arrive: nothing of them is kept
        killed = subprocess.run(
            f"set -o pipefail; {pipeline.replace(f'| {BIN}/agents-write --append {out}', '| head -c 0')}",
            shell=True, executable="/bin/bash", capture_output=True, timeout=60,
        )  # fmt: skip
        assert killed.returncode != 0
        assert not out.exists()
        for _ in range(2):
            done = subprocess.run(pipeline, shell=True, capture_output=True, timeout=60)
            assert done.returncode == 0, done.stderr.decode()
        assert sorted(r["_id"] for r in map(orjson.loads, out.read_bytes().splitlines())) == list(
            range(1, 11)
        )
        assert Counter(api.submitted) == Counter(str(n) for n in range(1, 11))  # paid once
        # the second rerun found every ID in the output: the batch was forgotten, its files
        # deleted on the server
        assert not api.files


def test_ctrl_c_while_waiting_leaves_the_batches_and_says_how_to_collect_or_cancel(
    state: Path,
) -> None:
    with FakeBatchAPI(steps=10_000) as api:
        command = [
            str(BIN / "agents-map"), "--batch", "--base-url", api.url, "-m", "gpt-4o-mini",
            "--prompt", PROMPT, "--batch-poll", "0.05",
        ]  # fmt: skip
        source = state.parent / "in.jsonl"
        source.write_bytes(words(4))
        with source.open("rb") as stdin:
            process = subprocess.Popen(
                command, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        deadline = time.monotonic() + 30
        while not api.batches and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 130
        said = stderr.decode()
        assert "left running on the server: batch_1" in said
        assert "--batch-cancel" in said
        cancelled = batch_map(api, "--batch-cancel", stdin=words(4))
        assert cancelled.returncode == 4 and "cancelled batch_1" in cancelled.stderr.decode()
        api.steps = 3
        again = batch_map(api, stdin=words(4))  # collects what the cancelled one did, and the rest
        assert again.returncode == 0, again.stderr.decode()
        assert sorted(by_id(records(again))) == [1, 2, 3, 4]
        assert api.batches["batch_1"].status == "cancelled"


def test_processing_mode_batch_in_a_job_file(state: Path, tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("processing:\n  mode: batch\n  batch_size: 5\nprompt: 'Say {word}'\n")
    with FakeBatchAPI() as api:
        done = subprocess.run(
            [str(BIN / "agents-map"), "--config", str(job), "--base-url", api.url,
             "-m", "gpt-4o-mini", "--batch-poll", "0.01"],
            input=words(3), capture_output=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    assert len(api.batches) == 1 and len(records(done)) == 3
    assert "processing.batch_size: not used in batch mode" in done.stderr.decode()


def test_agents_process_batch_writes_the_output_and_forgets_the_batches(
    state: Path, tmp_path: Path
) -> None:
    source, out = tmp_path / "words.csv", tmp_path / "out.csv"
    source.write_text("word\nhola\nadiós\n")
    with FakeBatchAPI() as api:
        command = [
            str(BIN / "agents"), "process", str(source), str(out), "--batch", "--base-url",
            api.url, "-m", "gpt-4o-mini", "--prompt", PROMPT, "--batch-poll", "0.01",
        ]  # fmt: skip
        detached = subprocess.run([*command, "--batch-detach"], capture_output=True, timeout=60)
        assert detached.returncode == 4, detached.stderr.decode()
        assert not out.exists()
        done = subprocess.run(command, capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr.decode()
        assert out.read_text().splitlines() == [
            "_id,word,result", "1,hola,answer: Say hola", "2,adiós,answer: Say adiós",
        ]  # fmt: skip
        assert len(api.batches) == 1 and not api.files  # output files deleted once kept
        assert not list((state / "agents" / "batches").iterdir())
        again = subprocess.run(command, capture_output=True, timeout=60)
        assert again.returncode == 0 and len(api.batches) == 1  # nothing left to do


def test_the_python_api_runs_a_batch_job(state: Path) -> None:
    from agents.api import map_records
    from agents.map.job import Job

    with FakeBatchAPI() as api:
        job = Job.create(
            prompt=PROMPT, model="gpt-4o-mini", base_url=api.url, batch=True, batch_poll=0.01
        )
        found = list(map_records([{"_id": 1, "word": "a"}, {"_id": 2, "word": "b"}], job))
    assert [r["result"] for r in found] == ["answer: Say a", "answer: Say b"]
    assert len(api.batches) == 1


def test_a_second_run_of_the_same_job_at_once_is_refused(state: Path) -> None:
    with FakeBatchAPI(steps=10_000) as api:
        source = state.parent / "in.jsonl"
        source.write_bytes(words(3))
        command = [
            str(BIN / "agents-map"), "--batch", "--base-url", api.url, "-m", "gpt-4o-mini",
            "--prompt", PROMPT, "--batch-poll", "0.05",
        ]  # fmt: skip
        with source.open("rb") as stdin:
            first = subprocess.Popen(
                command, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
        try:
            deadline = time.monotonic() + 30
            while not api.batches and time.monotonic() < deadline:
                time.sleep(0.05)
            second = batch_map(api, stdin=words(3))
            assert second.returncode == 2
            assert f"another agents-map (PID {first.pid}) is running this batch job" in (
                second.stderr.decode()
            )
            assert len(api.batches) == 1
        finally:
            first.send_signal(signal.SIGINT)
            first.communicate(timeout=30)


def test_a_lost_answer_to_create_is_found_by_its_metadata_not_created_again(state: Path) -> None:
    with FakeBatchAPI(create_lost=1) as api:
        done = batch_map(api, stdin=words(4))
    assert done.returncode == 0, done.stderr.decode()
    assert len(api.batches) == 1 and len(api.submitted) == 4
    assert sorted(by_id(records(done))) == [1, 2, 3, 4]


def test_records_that_repeat_an_id_are_each_answered_as_online(state: Path) -> None:
    rows = [{"_id": 7, "word": "a"}, {"_id": "7", "word": "b"}, {"_id": 8, "word": "c"}]
    rows.append({"_id": 8, "word": "d"})
    with FakeBatchAPI() as api:
        done = batch_map(api, stdin=jsonl(*rows))
        assert done.returncode == 0, done.stderr.decode()
        assert [r["result"] for r in records(done)] == [f"answer: Say {w}" for w in "abcd"]
        assert sorted(api.submitted) == ["7", "7#2", "8", "8#2"]
        again = batch_map(api, stdin=jsonl(*rows))  # the same job: written again, not sent
        assert records(again) == records(done) and len(api.batches) == 1


def test_the_same_records_in_another_order_are_the_same_job(state: Path) -> None:
    with FakeBatchAPI(steps=10_000) as api:
        detached = batch_map(api, "--batch-detach", stdin=words(6))
        assert detached.returncode == 4
        said = detached.stderr.decode()
        assert "--batch-detach" not in said.split("same input: ", 1)[1]  # the command to run
        api.steps = 0
        shuffled = b"".join(reversed(words(6).splitlines(keepends=True)))
        collected = batch_map(api, "--batch-detach", stdin=shuffled)  # still collects
        assert collected.returncode == 0, collected.stderr.decode()
        assert sorted(by_id(records(collected))) == list(range(1, 7))
        assert len(api.batches) == 1


def test_a_provider_file_with_a_repeated_or_missing_line_is_said_and_retried(
    state: Path,
) -> None:
    def faulty(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if any(line["custom_id"] == "2" for line in lines) and len(lines) > 1:
            twice = dict(lines[0], response={**lines[0]["response"], "body": completion("NO")})
            return [line for line in lines if line["custom_id"] != "2"] + [twice]
        return lines

    with FakeBatchAPI(output_lines=faulty, shuffle=False) as api:
        done = batch_map(api, stdin=words(3))
    assert done.returncode == 0, done.stderr.decode()
    assert "1 repeated custom_id (the first line of each is used)" in done.stderr.decode()
    found = by_id(records(done))
    assert all(found[n]["result"] == f"answer: Say w{n}" for n in (1, 2, 3))
    assert [line["custom_id"] for line in api.batches["batch_2"].lines] == ["2"]


def test_without_a_batch_api_nothing_is_uploaded(state: Path) -> None:
    with FakeBatchAPI(batches_route=False) as api:
        done = batch_map(api, stdin=words(3))
    assert done.returncode == 2 and api.uploads == 0


def test_online_retries_count_in_the_tokens_and_the_cost(state: Path) -> None:
    stats = state.parent / "stats.json"
    with FakeBatchAPI(fate=lambda number: "failed") as api:
        done = batch_map(
            api, "--batch-retry", "online", "--price", "2,8", "--stats", str(stats),
            stdin=words(4),
        )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    document = orjson.loads(stats.read_bytes())
    assert document["requests"] == 8 and document["tokens"]["input"] == 40  # 4 online answers
    assert document["retries"] == {"batch_failed": 4}
    assert document["cost_usd"] == pytest.approx(4 * (10 * 2 + 5 * 8) / 1e6)
    assert "online retries at the online price" in done.stderr.decode()


def test_a_changed_input_says_the_batches_of_the_old_one_still_run(state: Path) -> None:
    with FakeBatchAPI(steps=10_000) as api:
        assert batch_map(api, "--batch-detach", stdin=words(3)).returncode == 4
        api.steps = 0
        changed = batch_map(api, "--batch-detach", stdin=words(4))  # one record more
        said = changed.stderr.decode()
        assert "batches of this job on another input are still running (batch_1)" in said
        assert batch_map(api, stdin=words(3)).returncode == 0  # the old input collects its own


def test_a_reask_sent_online_carries_the_answer_and_what_was_wrong(state: Path) -> None:
    def answer(body: dict[str, Any], custom_id: str) -> tuple[int, dict[str, Any]]:
        if len(body["messages"]) == 1 and custom_id == "2":
            return 200, completion("not json at all")
        return 200, completion('{"ok": true}')

    with FakeBatchAPI(answer) as api:
        done = batch_map(api, "--output-format", "json", "--batch-retry", "online", stdin=words(3))
    assert done.returncode == 0, done.stderr.decode()
    assert by_id(records(done))[2]["result"] == {"ok": True}
    (online,) = api.online
    assert [m["role"] for m in online["messages"]] == ["user", "assistant", "user"]
    assert online["messages"][1]["content"] == "not json at all"


@pytest.mark.parametrize("seed", range(8))
def test_random_fates_and_crashes_then_reruns_pay_for_each_answer_once(
    state: Path, tmp_path: Path, seed: int
) -> None:
    """Seeded: batches that complete, expire or fail as a whole, lines that get a 500 once, and
    a SIGKILL at a random step of some runs, through agents-write --append, rerun until it
    exits 0. Then every ID is in the output once, with its answer, and no request was submitted
    again after it had been answered (each ID got one 200, in its last submission)."""
    import random
    import threading

    chance = random.Random(seed)
    count = chance.randint(15, 40)
    fates = {n: chance.choice(["completed", "completed", "expired", "failed"]) for n in range(1, 7)}
    flaky = {str(n) for n in range(1, count + 1) if chance.random() < 0.2}
    lock = threading.Lock()
    answered: Counter[str] = Counter()
    seen: Counter[str] = Counter()

    def answer(body: dict[str, Any], custom_id: str) -> tuple[int, dict[str, Any]]:
        with lock:
            seen[custom_id] += 1
            if custom_id in flaky and seen[custom_id] == 1:
                return 500, {"error": {"message": "try again"}}
            answered[custom_id] += 1
        return echo(body, custom_id)

    out, source = tmp_path / "out.jsonl", tmp_path / "in.jsonl"
    source.write_bytes(words(count))
    points = ["after-upload", "after-create", "while-polling", "after-emit", None, None]
    with FakeBatchAPI(
        answer, fate=lambda n: fates.get(n, "completed"), expired_share=chance.random()
    ) as api:
        for run in range(15):
            crash = chance.choice(points) if run < 6 else None
            env = dict(os.environ, **({"AGENTS_BATCH_CRASH": crash} if crash else {}))
            done = subprocess.run(
                f"set -o pipefail; {BIN}/agents-map --batch --base-url {api.url} -m gpt-4o-mini "
                f"--prompt '{PROMPT}' --batch-poll 0.01 --max-retries 20 -q --resume {out} "
                f"< {source} | {BIN}/agents-write --append {out}",
                shell=True, executable="/bin/bash", capture_output=True, env=env, timeout=120,
            )  # fmt: skip
            if done.returncode == 0 and not crash:
                break
        else:
            raise AssertionError(done.stderr.decode())
        kept = [orjson.loads(line) for line in out.read_bytes().splitlines()]
        assert sorted(r["_id"] for r in kept) == list(range(1, count + 1))
        assert all(r["result"] == f"answer: Say w{r['_id']}" for r in kept)
        assert set(answered) == {str(n) for n in range(1, count + 1)}
        assert max(answered.values()) == 1, answered  # never paid twice for an answer
        for custom_id in answered:  # submitted again only after a batch ended not answering it
            batches = [b for b in api.batches.values() if any(
                line["custom_id"] == custom_id for line in b.lines)]  # fmt: skip
            assert custom_id in batches[-1].answered
            for earlier in batches[:-1]:
                assert earlier.status in ("completed", "expired", "failed"), (custom_id, earlier)
                assert custom_id not in earlier.answered
