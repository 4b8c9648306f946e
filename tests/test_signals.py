"""Real processes in real pipes: a closed stdout, Ctrl-C and SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import BIN, jsonl, shell


def big_csv(path: Path, rows: int = 200_000) -> Path:
    with path.open("w") as out:
        out.write("id,word,note\n")
        for i in range(rows):
            out.write(f'{i},word{i},"a note, with a comma"\n')
    return path


def test_head_closes_the_pipe_quietly(tmp: Path) -> None:
    source = big_csv(tmp / "big.csv")
    done = shell(f'agents-read {source} | head -1; echo "status=${{PIPESTATUS[0]}}"')
    assert (
        done.stdout
        == '{"_id":1,"id":"0","word":"word0","note":"a note, with a comma"}\nstatus=141\n'
    )
    assert done.stderr == ""


def test_write_to_closed_stdout_is_quiet(tmp: Path) -> None:
    source = big_csv(tmp / "big.csv")
    done = shell(
        f"agents-read {source} | agents-write - -f jsonl | head -2 >/dev/null; "
        'echo "${PIPESTATUS[@]}"'
    )
    statuses = done.stdout.split()
    assert statuses[1:] == ["141", "0"]
    assert statuses[0] in ("0", "141")
    assert done.stderr == ""


def start(command: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(BIN / command[0]), *command[1:]],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )  # type: ignore[call-overload]


def wait_for(condition: object, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_ctrl_c_leaves_an_atomic_target_untouched(tmp: Path) -> None:
    target = tmp / "out.csv"
    target.write_text("old,content\n")
    process = start(["agents-write", str(target)])
    assert process.stdin is not None
    process.stdin.write(jsonl(*({"_id": i, "a": i} for i in range(1000))))
    process.stdin.flush()
    wait_for(lambda: any(p.name.endswith(".tmp") for p in tmp.iterdir()))  # the temporary file
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 130
    assert stderr == b"agents-write: interrupted\n"
    assert target.read_text() == "old,content\n"
    assert [p.name for p in tmp.iterdir()] == ["out.csv"]


def test_sigterm_leaves_an_atomic_target_untouched(tmp: Path) -> None:
    target = tmp / "out.jsonl"
    process = start(["agents-write", str(target)])
    assert process.stdin is not None
    process.stdin.write(jsonl({"_id": 1}))
    process.stdin.flush()
    wait_for(lambda: any(p.name.endswith(".tmp") for p in tmp.iterdir()))
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=10)
    assert (process.returncode, stderr) == (143, b"agents-write: terminated\n")
    assert list(tmp.iterdir()) == []


def test_ctrl_c_in_append_mode_keeps_what_is_still_in_the_pipe(tmp: Path) -> None:
    target = tmp / "out.jsonl"
    process = start(["agents-write", "--append", str(target)])
    assert process.stdin is not None
    process.stdin.write(jsonl({"_id": 1}, {"_id": 2}))
    process.stdin.flush()
    wait_for(lambda: target.exists() and target.read_text().count("\n") == 2)
    process.send_signal(signal.SIGINT)
    time.sleep(0.2)
    # an upstream result that arrives after Ctrl-C, then the end of the input
    _, stderr = process.communicate(jsonl({"_id": 3}), timeout=10)
    assert process.returncode == 130
    assert target.read_text() == '{"_id":1}\n{"_id":2}\n{"_id":3}\n'
    assert (
        stderr
        == (
            f"agents-write: interrupted: 3 records written to {target}\n"
            "agents-write: run the same command again to resume\n"
        ).encode()
    )


def test_second_ctrl_c_stops_at_once_with_whole_lines(tmp: Path) -> None:
    target = tmp / "out.jsonl"
    process = start(["agents-write", "--append", str(target)])
    assert process.stdin is not None
    process.stdin.write(jsonl({"_id": 1}))
    process.stdin.flush()
    wait_for(lambda: target.exists() and target.read_text().count("\n") == 1)
    process.send_signal(signal.SIGINT)
    time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=10)
    assert process.returncode == 130
    assert target.read_text() == '{"_id":1}\n'


def test_ctrl_c_stops_agents_read(tmp: Path) -> None:
    fifo = tmp / "in.csv"
    os.mkfifo(fifo)
    process = subprocess.Popen(
        [sys.executable, str(BIN / "agents-read"), str(fifo)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    with fifo.open("w") as feed:
        feed.write("a\n1\n")
        feed.flush()
        time.sleep(0.3)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 130
    assert stderr == b"agents-read: interrupted\n"
