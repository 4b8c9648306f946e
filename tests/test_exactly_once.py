"""Exactly once, under every crash: the output's state has one owner (agents.done).

Each reproduction of the exactly-once issue is its own regression test here; the seeded crash
campaign (tests/crash.py) samples the combinations.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import pytest
from conftest import BIN, jsonl, run, shell
from crash import Scenario, pairwise, run_scenario
from fake_llm import FakeLLM, Reply, last_user_message

from agents.done import durable
from agents.done.durable import Disk


def answer(request: dict[str, Any], number: int) -> Reply:
    return Reply(f"answer {last_user_message(request)}", delay=0.01)


def words(path: Path, count: int) -> Path:
    path.write_text("word\n" + "".join(f"w{n}\n" for n in range(1, count + 1)))
    return path


def pipeline(source: Path, url: str, resume: str, write_args: str, extra: str = "") -> str:
    return (
        f"set -o pipefail; agents-read {source} --id word | agents-map --base-url {url} "
        f"--prompt '{{word}}' -j 4 -q --resume {resume} {extra} | agents-write {write_args}"
    )


def read_back(path: Path, *args: str) -> list[dict[str, Any]]:
    result = shell(f"agents-read {path} {' '.join(args)}")
    assert result.returncode == 0, result.stderr
    return [orjson.loads(line) for line in result.stdout.splitlines()]


# 1. An error record and its success, both left by a crash, are compacted by the next run --------


CRASH_LEFT = [
    {"_id": "w1", "word": "w1", "result": "answer w1"},
    {"_id": "w2", "error": "HTTP 400", "error_type": "bad_request", "attempts": 1, "item": {}},
    {"_id": "w3", "error": "HTTP 400", "error_type": "bad_request", "attempts": 1, "item": {}},
    {"_id": "w2", "word": "w2", "result": "answer w2"},
    {"_id": "w3", "word": "w3", "result": "first success"},
    {"_id": "w3", "word": "w3", "result": "second success"},
]


@pytest.mark.parametrize("name", ["out.jsonl", "out.csv", "out.tsv", "out.json"])
def test_an_error_and_its_success_left_by_a_crash_are_repaired(tmp: Path, name: str) -> None:
    output = tmp / name
    seeded = run("agents-write", str(output), stdin=jsonl(*CRASH_LEFT))
    assert seeded.status == 0, seeded.stderr
    source = words(tmp / "words.csv", 4)
    with FakeLLM(answer) as server:
        result = shell(pipeline(source, server.url, str(output), f"--append {output}"), tmp)
        assert result.returncode == 0, result.stderr
        assert [last_user_message(r) for r in server.requests] == ["w4"]  # nothing paid twice
    records = read_back(output)
    assert sorted(str(r["_id"]) for r in records) == ["w1", "w2", "w3", "w4"]
    by_id = {str(r["_id"]): r for r in records}
    assert by_id["w2"]["result"] == "answer w2"
    assert by_id["w3"]["result"] == "first success"  # the first success stands
    assert not any(r.get("error") for r in records)


def test_a_crash_while_failed_records_are_retried_leaves_each_id_once(tmp: Path) -> None:
    """The reproduction: every fourth word refused once, kill -9 during the retrying run."""
    source = words(tmp / "words.csv", 40)
    output = tmp / "out.csv"
    seen: dict[str, int] = {}

    def script(request: dict[str, Any], number: int) -> Reply:
        word = last_user_message(request)
        seen[word] = seen.get(word, 0) + 1
        if int(word[1:]) % 4 == 0 and seen[word] == 1:
            return Reply("refused once", status=400)
        return Reply(f"answer {word}", delay=0.15)

    with FakeLLM(script) as server:
        command = pipeline(source, server.url, str(output), f"--append {output}").replace(
            "-j 4", "-j 2"
        )
        first = shell(command, tmp)
        assert first.returncode == 3, first.stderr
        process = subprocess.Popen(
            ["bash", "-c", command],
            cwd=tmp,
            env=_env(),
            process_group=0,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while server.answered < 45 and time.monotonic() < deadline:
            time.sleep(0.005)
        os.killpg(process.pid, 9)
        process.wait()
        third = shell(command, tmp)
        assert third.returncode == 0, third.stderr
    ids = [str(r["_id"]) for r in read_back(output)]
    assert sorted(ids) == sorted(f"w{n}" for n in range(1, 41))


def _env() -> dict[str, str]:
    import sys

    path = os.pathsep.join([str(BIN), os.path.dirname(sys.executable), os.environ["PATH"]])
    return {**os.environ, "PATH": path}


# 2. Whole-file rewrites never truncate the live output -----------------------------------------


class FullDisk(Disk):
    """Fails the ``nth`` ``operation`` (write, fsync or rename) with ENOSPC."""

    def __init__(self, operation: str, nth: int = 1) -> None:
        self.operation = operation
        self.nth = nth
        self.seen = 0

    def tick(self, operation: str) -> None:
        if operation == self.operation:
            self.seen += 1
            if self.seen == self.nth:
                raise OSError(errno.ENOSPC, "No space left on device")

    def open(self, path: str, mode: str) -> BinaryIO:
        return _Counted(super().open(path, mode), self)  # type: ignore[return-value]

    def fsync(self, stream: BinaryIO) -> None:
        self.tick("fsync")
        super().fsync(stream)

    def replace(self, source: str, target: str) -> None:
        self.tick("rename")
        super().replace(source, target)


class _Counted:
    def __init__(self, stream: BinaryIO, disk: FullDisk) -> None:
        self._stream = stream
        self._disk = disk

    def write(self, data: bytes) -> int:
        self._disk.tick("write")
        return self._stream.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def __enter__(self) -> _Counted:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stream.close()


WIDER = jsonl(
    {"_id": 3, "word": "c", "result": "C"},
    {"_id": 4, "error": "HTTP 400", "error_type": "bad_request", "attempts": 1, "item": {}},
)


@pytest.mark.parametrize("operation", ["write", "fsync", "rename"])
@pytest.mark.parametrize("name", ["out.csv", "out.tsv"])
def test_a_full_disk_while_columns_widen_leaves_a_whole_table(
    tmp: Path, operation: str, name: str
) -> None:
    output = tmp / name
    assert (
        run(
            "agents-write",
            str(output),
            stdin=jsonl(
                {"_id": 1, "word": "a", "result": "A"}, {"_id": 2, "word": "b", "result": "B"}
            ),
        ).status
        == 0
    )
    before = output.read_bytes()
    with durable.using(FullDisk(operation, nth=2 if operation == "write" else 1)):
        failed = run("agents-write", "--append", str(output), stdin=WIDER)
    assert failed.status == 1, failed.stderr
    assert "No space left on device" in failed.stderr
    assert output.read_bytes().startswith(before)  # never truncated
    assert not [p for p in tmp.iterdir() if p.name.endswith(".tmp")]  # no temporary file left
    again = run("agents-write", "--append", str(output), stdin=WIDER)
    assert again.status == 0, again.stderr
    rows = read_back(output)
    assert [str(r["_id"]) for r in rows] == ["1", "2", "3", "4"]
    assert rows[3]["error_type"] == "bad_request"


@pytest.mark.parametrize("operation", ["write", "fsync", "rename"])
@pytest.mark.parametrize("name", ["out.jsonl", "out.csv", "out.json"])
def test_a_full_disk_during_compaction_loses_nothing(tmp: Path, operation: str, name: str) -> None:
    output = tmp / name
    failed_first = jsonl(
        {"_id": 1, "word": "a", "result": "A"},
        {"_id": 2, "error": "HTTP 500", "error_type": "server_error", "attempts": 3, "item": {}},
    )
    assert run("agents-write", "--append", str(output), stdin=failed_first).status == 0
    success = jsonl({"_id": 2, "word": "b", "result": "B"})
    with durable.using(FullDisk(operation, nth=1 if operation != "write" else 3)) as disk:
        failed = run("agents-write", "--append", str(output), stdin=success)
    assert disk.seen >= disk.nth, "the fault was never reached"
    assert failed.status == 1, failed.stderr
    kept = read_back(output)
    assert {str(r["_id"]) for r in kept} == {"1", "2"}  # nothing lost, maybe not yet compacted
    again = run("agents-write", "--append", str(output), stdin=success)  # the rerun
    assert again.status == 0, again.stderr
    rows = read_back(output)
    assert [(str(r["_id"]), r.get("result")) for r in rows] == [("1", "A"), ("2", "B")]


# 3. --resume reads the output as agents-write wrote it -----------------------------------------


@pytest.mark.parametrize(
    ("name", "write_args", "resume"),
    [
        ("out.db", "--append {out} --table T", "{out}"),
        ("out.db", "--append 'sqlite://{out}?table=T'", "'sqlite://{out}?table=T'"),
        ("out.csv", "--append {out} -d ';'", "{out}"),
        ("out.tsv", "--append {out}", "{out}"),
        ("out.txt", "--append {out} --format jsonl", "{out}"),
    ],
)
def test_resume_finds_what_the_writer_wrote(
    tmp: Path, name: str, write_args: str, resume: str
) -> None:
    output = tmp / name
    half, whole = words(tmp / "half.csv", 6), words(tmp / "whole.csv", 10)
    with FakeLLM(answer) as server:
        spelled = write_args.format(out=output), resume.format(out=output)
        first = shell(pipeline(half, server.url, spelled[1], spelled[0]), tmp)
        assert first.returncode == 0, first.stderr
        second = shell(pipeline(whole, server.url, spelled[1], spelled[0]), tmp)
        assert second.returncode == 0, second.stderr
        asked = [last_user_message(r) for r in server.requests]
    assert sorted(asked) == sorted(f"w{n}" for n in range(1, 11))  # each asked once
    assert second.stderr == ""  # -q: not even the notes on what was skipped


def test_resume_of_a_database_without_the_default_table_names_the_tables(tmp: Path) -> None:
    output = tmp / "out.db"
    connection = sqlite3.connect(output)
    connection.execute('CREATE TABLE "T" ("_id" TEXT PRIMARY KEY, "result" TEXT)')
    connection.execute("INSERT INTO T VALUES ('w1', 'x')")
    connection.commit()
    connection.close()
    result = shell(
        f'echo \'{{"_id":"w1","word":"w1"}}\' | agents-map --base-url http://127.0.0.1:9 '
        f"--prompt '{{word}}' --resume {output}"
    )
    assert result.returncode == 2
    assert result.stderr == (
        f"agents-map: error: --resume {output}: the database has no table 'records'; it has "
        f"'T' with IDs\n"
        f"  hint: name the table the results go to, as agents-write is given it: "
        f"--resume 'sqlite://{output}?table=NAME'\n"
    )


def test_a_new_results_table_beside_another_is_a_first_run(tmp: Path) -> None:
    output = tmp / "o.db"
    source = words(tmp / "words.csv", 5)
    assert (
        shell(
            f"agents-read {source} --id word | agents-write --append {output} --table words"
        ).returncode
        == 0
    )
    url = f"'sqlite://{output}?table=results'"
    with FakeLLM(answer) as server:
        first = shell(pipeline(source, server.url, url, f"--append {url}"), tmp)
        assert first.returncode == 0, first.stderr
        assert len(server.requests) == 5
    assert len(read_back(Path(str(output)), "--table", "results")) == 5


@pytest.mark.parametrize("spelling", ["-", "out.jsonl.gz", "nowhere/out.jsonl", ".", "out"])
def test_a_resume_of_what_cannot_be_an_output_is_refused_early(tmp: Path, spelling: str) -> None:
    result = shell(
        f'echo \'{{"_id":1,"w":1}}\' | agents-map --base-url http://127.0.0.1:9 '
        f"--prompt '{{w}}' --resume {spelling}",
        tmp,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("agents-map: error: --resume ")
    assert "Traceback" not in result.stderr


def test_resume_of_an_output_without_ids_is_refused(tmp: Path) -> None:
    output = tmp / "out.csv"
    output.write_text("word,result\nw1,x\n")
    result = shell(
        f'echo \'{{"_id":"w1","word":"w1"}}\' | agents-map --base-url http://127.0.0.1:9 '
        f"--prompt '{{word}}' --resume {output}"
    )
    assert result.returncode == 2
    assert result.stderr.startswith(
        f"agents-map: error: --resume {output}: the output holds 1 records but no _id"
    )


# 4. One writer per output -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["out.jsonl", "out.csv", "out.tsv", "out.json", "out.db"])
def test_a_second_writer_is_refused_and_nothing_is_corrupt(tmp: Path, name: str) -> None:
    output = tmp / name
    first = subprocess.Popen(
        [str(BIN / "agents-write"), "--append", str(output)],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    assert first.stdin is not None
    first.stdin.write(jsonl({"_id": 1, "v": "a"}))
    first.stdin.flush()
    deadline = time.monotonic() + 20
    while not Path(f"{output}.agents-lock").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    second = shell(f'echo \'{{"_id": 2, "v": "b"}}\' | agents-write --append {output}')
    assert second.returncode == 2
    assert second.stderr == (
        f"agents-write: error: {output}: another agents-write (pid {first.pid}) is writing to "
        "it\n  hint: wait for it to finish, or add --wait to start when it does\n"
    )
    waiting = subprocess.Popen(
        ["bash", "-c", f'echo \'{{"_id": 3, "v": "c"}}\' | agents-write --wait --append {output}'],
        env=_env(),
        stderr=subprocess.PIPE,
    )
    time.sleep(0.5)
    assert waiting.poll() is None  # queued behind the first writer
    first.stdin.write(jsonl({"_id": 4, "v": "d"}))
    first.stdin.close()
    assert first.wait(20) == 0
    assert waiting.wait(20) == 0
    assert sorted(str(r["_id"]) for r in read_back(output)) == ["1", "3", "4"]
    assert not Path(f"{output}.agents-lock").exists()


def test_a_resume_beside_a_writer_of_another_pipeline_is_refused(tmp: Path) -> None:
    """A second pipeline would pay again for what the first one is about to write."""
    output = tmp / "out.jsonl"
    writer = subprocess.Popen(  # another job of the shell: a process group of its own
        [str(BIN / "agents-write"), "--append", str(output)],
        stdin=subprocess.PIPE,
        env=_env(),
        process_group=0,
    )
    deadline = time.monotonic() + 20
    while not Path(f"{output}.agents-lock").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # the PID is written once the lock is held
    source = words(tmp / "words.csv", 3)
    result = shell(
        pipeline(source, "http://127.0.0.1:9/v1", str(output), f"--append {output}"), tmp
    )
    assert writer.stdin is not None
    writer.stdin.close()
    assert writer.wait(20) == 0
    assert result.returncode == 2
    assert (
        f"agents-map: error: --resume {output}: another agents-write (pid {writer.pid}), not part "
        "of this pipeline, is writing to it; resuming now would pay again for what it writes\n"
        "  hint: wait for it to finish, then run this command again\n"
    ) in result.stderr


def test_a_symlink_to_an_output_shares_its_lock(tmp: Path) -> None:
    output = tmp / "out.jsonl"
    output.write_bytes(b"")
    (tmp / "alias.jsonl").symlink_to(output)
    writer = subprocess.Popen(
        [str(BIN / "agents-write"), "--append", str(output)], stdin=subprocess.PIPE, env=_env()
    )
    deadline = time.monotonic() + 20
    while not Path(f"{output}.agents-lock").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    second = shell(f"echo '{{\"_id\": 2}}' | agents-write --append {tmp / 'alias.jsonl'}")
    assert writer.stdin is not None
    writer.stdin.close()
    writer.wait(20)
    assert second.returncode == 2
    assert "another agents-write" in second.stderr


def test_temporary_files_a_killed_writer_left_are_removed(tmp: Path) -> None:
    output = tmp / "out.csv"
    assert run("agents-write", "--append", str(output), stdin=jsonl({"_id": 1, "a": 1})).status == 0
    stale = tmp / ".out.csv.k3j2h1.tmp"
    stale.write_bytes(b"half a rewrite")
    assert run("agents-write", "--append", str(output), stdin=jsonl({"_id": 2, "a": 2})).status == 0
    assert not stale.exists()
    assert [str(r["_id"]) for r in read_back(output)] == ["1", "2"]


def test_a_lock_left_by_a_killed_writer_never_blocks(tmp: Path) -> None:
    output = tmp / "out.jsonl"
    writer = subprocess.Popen(
        [str(BIN / "agents-write"), "--append", str(output)], stdin=subprocess.PIPE, env=_env()
    )
    deadline = time.monotonic() + 20
    while not Path(f"{output}.agents-lock").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    writer.kill()
    writer.wait()
    assert Path(f"{output}.agents-lock").exists()
    after = run("agents-write", "--append", str(output), stdin=jsonl({"_id": 1}))
    assert after.status == 0, after.stderr


# 5. SIGTERM to the whole pipeline keeps what was paid for ---------------------------------------


@pytest.mark.parametrize("output", ["csv", "jsonl", "sqlite-table"])
def test_sigterm_to_the_whole_group_pays_nothing_twice(tmp: Path, output: str) -> None:
    report = run_scenario(Scenario(20261125, output, 8, "TERM", "group"), tmp)
    assert len(report.kills) >= 2, str(report)
    assert report.violations == [], str(report)


# The crash campaign's pairwise sample ------------------------------------------------------------


@pytest.mark.parametrize("scenario", pairwise(20261125, 15), ids=str)
def test_crash_campaign_sample(tmp: Path, scenario: Scenario) -> None:
    report = run_scenario(scenario, tmp)
    print(report)
    assert report.violations == [], str(report)


# 7. Outputs and sidecars of agents 0.1.0 -------------------------------------------------------


FIXTURES = Path(__file__).parent / "fixtures" / "v0.1.0"


def test_an_output_and_sidecar_of_version_0_1_0_still_resume(tmp: Path) -> None:
    output = tmp / "translations.csv"
    output.write_bytes((FIXTURES / "translations.csv").read_bytes())
    sidecar = Path(f"{output}.agents-job.jsonl")
    sidecar.write_bytes((FIXTURES / "translations.csv.agents-job.jsonl").read_bytes())
    source = words(tmp / "words.csv", 5)
    with FakeLLM(answer) as server:
        command = (
            f"set -o pipefail; agents-read {source} | agents-map --base-url {server.url} "
            f"--prompt 'Translate: {{word}}' -q --resume {output} | agents-write --append {output}"
        )
        result = shell(command, tmp)
        assert result.returncode == 0, result.stderr
        asked = sorted(last_user_message(r) for r in server.requests)
    assert asked == ["Translate: w3", "Translate: w5"]  # w3 had failed, w5 is new
    ids = sorted(str(r["_id"]) for r in read_back(output))
    assert ids == ["1", "2", "3", "4", "5"]


def test_a_sidecar_of_a_newer_version_is_refused(tmp: Path) -> None:
    output = tmp / "out.jsonl"
    output.write_bytes(jsonl({"_id": 1, "result": "x"}))
    Path(f"{output}.agents-job.jsonl").write_text('{"sidecar": 99, "job": {}}\n')
    result = shell(
        f"echo '{{\"_id\":1}}' | agents-map --base-url http://127.0.0.1:9 --prompt x "
        f"--resume {output}"
    )
    assert result.returncode == 2
    assert "written by a newer version of agents (sidecar version 99)" in result.stderr
    assert "hint: upgrade agents to resume this output, or write to a new one" in result.stderr


# What a new user broke (2) ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["b.jsonl", "b.csv", "b.db", "b.json"])
def test_records_before_a_bad_line_in_the_same_batch_are_kept(tmp: Path, name: str) -> None:
    lines = (
        jsonl({"_id": 1, "w": "a"}, {"_id": 2, "w": "b"}) + b'{"_id":true}\n' + jsonl({"_id": 4})
    )
    result = run("agents-write", "--append", str(tmp / name), stdin=lines)
    assert result.status == 1
    assert sorted(str(r["_id"]) for r in read_back(tmp / name)) == ["1", "2"]


def test_records_before_a_duplicate_error_are_kept(tmp: Path) -> None:
    lines = jsonl({"_id": 1}, {"_id": 2}, {"_id": 3}, {"_id": 2}, {"_id": 4})
    result = run(
        "agents-write", "--append", str(tmp / "o.jsonl"), "--on-duplicate", "error", stdin=lines
    )
    assert result.status == 1
    assert [str(r["_id"]) for r in read_back(tmp / "o.jsonl")] == ["1", "2", "3"]


def test_records_with_ids_are_not_appended_to_rows_without(tmp: Path) -> None:
    target = tmp / "plain.csv"
    target.write_text("word\nfoo\nbar\n")
    result = run("agents-write", "--append", str(target), stdin=jsonl({"_id": 1, "word": "new"}))
    assert result.status == 2
    assert result.stderr.startswith(
        f"agents-write: error: {target}: its rows have no _id column, so records with IDs "
        "cannot be appended to it\n"
    )
    assert target.read_text() == "word\nfoo\nbar\n"
