"""agents-map in real pipes: a closed stdout and Ctrl-C across the three commands."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import BIN, shell
from fake_llm import FakeLLM, Reply, last_user_message


def words_csv(path: Path, count: int) -> Path:
    path.write_text("word\n" + "".join(f"w{number}\n" for number in range(1, count + 1)))
    return path


def slow(seconds: float) -> Any:
    return lambda request, number: Reply(f"answer {last_user_message(request)}", delay=seconds)


def test_head_stops_the_requests(tmp: Path) -> None:
    source = words_csv(tmp / "w.csv", 300)
    with FakeLLM(slow(0.02)) as server:
        done = shell(
            f"agents-read {source} | agents-map --base-url {server.url} --prompt '{{word}}' -j 4 "
            '| head -1; echo "status=${PIPESTATUS[1]}"',
        )
        seen = len(server.requests)
        time.sleep(0.5)
        assert len(server.requests) == seen  # nothing was sent after the pipe closed
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and lines[1] == "status=141"
    assert orjson.loads(lines[0])["result"].startswith("answer w")
    assert done.stderr == ""
    assert seen < 20


def start(command: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(BIN / command[0]), *command[1:]], **kwargs)


def test_ctrl_c_keeps_the_results_in_flight(tmp: Path) -> None:
    source = words_csv(tmp / "w.csv", 100)
    target = tmp / "out.jsonl"
    with FakeLLM(slow(1.0)) as server:
        reader = start(
            ["agents-read", str(source)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            process_group=0,
        )
        group = reader.pid
        mapper = start(
            ["agents-map", "--base-url", server.url, "--prompt", "{word}", "-j", "4"],
            stdin=reader.stdout,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            process_group=group,
        )
        writer = start(
            ["agents-write", "--append", str(target)],
            stdin=mapper.stdout,
            stderr=subprocess.PIPE,
            process_group=group,
        )
        assert reader.stdout is not None and mapper.stdout is not None
        reader.stdout.close()
        mapper.stdout.close()
        deadline = time.monotonic() + 10
        while server.in_flight < 4:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.killpg(group, signal.SIGINT)
        statuses = [process.wait(timeout=20) for process in (reader, mapper, writer)]
        answered = server.answered
        sent = len(server.requests)
    # agents-read may have finished already: 100 short lines fit in the pipe
    assert statuses[0] in (0, 130) and statuses[1:] == [130, 130]
    lines = target.read_text().splitlines()
    assert len(lines) == answered >= 4  # every answer paid for reached the output
    assert sent == answered
    assert mapper.stderr is not None
    said = mapper.stderr.read().decode()
    assert f"agents-map: interrupted: {answered} results and 0 error records written" in said
    # the fake server counts 10 input and 5 output tokens an answer
    assert f"Tokens used: {15 * answered} (input: {10 * answered} | output: {5 * answered})" in said


@pytest.mark.parametrize("stream", [False, True])
def test_results_larger_than_a_pipe_reach_a_slow_reader_whole(tmp_path: Path, stream: bool) -> None:
    """A result of 300 KB into a pipe whose reader is slow to start: every byte arrives (the
    pipe is watched for its reader leaving, which must not make writes to it non-blocking:
    they were cut at 64 KiB, silently, with exit status 0)."""
    from fake_llm import FakeLLM, Reply

    answer = "x" * 300_000
    with FakeLLM(lambda request, number: Reply(content=answer, chunk=5000)) as server:
        done = subprocess.run(
            ["bash", "-o", "pipefail", "-c",
             f"printf '{{\"_id\": 1, \"w\": \"a\"}}\\n{{\"_id\": 2, \"w\": \"b\"}}\\n' | "
             f"{BIN}/agents-map --base-url {server.url} --prompt '{{w}}' -q"
             f"{' --stream' if stream else ''} | (sleep 1; cat) > {tmp_path}/out.jsonl"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert [len(orjson.loads(line)["result"]) for line in lines] == [300_000, 300_000]
