"""Resume: the same pipeline run again after kill -9, Ctrl-C, SIGTERM, a torn line or a full
disk finishes the job with every record exactly once, paying again only for work in flight."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import BIN, ROOT
from fake_llm import FakeLLM, Reply, last_user_message

JOBS = 4


def words_csv(path: Path, count: int, first: int = 1) -> Path:
    path.write_text("word\n" + "".join(f"w{n}\n" for n in range(first, first + count)))
    return path


def answer(delay: float = 0.03) -> Any:
    return lambda request, number: Reply(f"answer {last_user_message(request)}", delay=delay)


def environment() -> dict[str, str]:
    python_bin = os.path.dirname(sys.executable)
    return {**os.environ, "PATH": os.pathsep.join([str(BIN), python_bin, os.environ["PATH"]])}


def pipeline(source: Path, output: Path, server: FakeLLM, extra: str = "") -> str:
    return (
        f"set -o pipefail; agents-read {source} | agents-map --base-url {server.url} "
        f"--prompt '{{word}}' -j {JOBS} --resume {output} {extra} "
        f"| agents-write --append {output}"
    )


def start(script: str, cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["bash", "-c", script],
        cwd=cwd,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        process_group=0,
    )


def signal_members(group: int, signum: int) -> None:
    """Signal every process of the pipeline's group but the shell that waits for it, as a
    terminal's Ctrl-C reaches the commands (the shell must live on to report their statuses)."""
    members = subprocess.run(["pgrep", "-g", str(group)], capture_output=True, text=True)
    for pid in map(int, members.stdout.split()):
        if pid != group:
            os.kill(pid, signum)


def wait_for_open_request(server: FakeLLM, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while server.in_flight < 1:
        assert time.monotonic() < deadline, "no request was ever open"
        time.sleep(0.005)


def ids_in(output: Path) -> list[str]:
    if not output.exists():
        return []
    return [
        str(orjson.loads(line)["_id"])
        for line in output.read_bytes().splitlines()
        if line.endswith(b"}")
    ]


def lines_in(output: Path) -> int:
    return output.read_bytes().count(b"\n") if output.exists() else 0


def test_kill_9_at_twenty_moments_then_exactly_once(tmp: Path) -> None:
    count = 300
    source = words_csv(tmp / "words.csv", count)
    output = tmp / "out.jsonl"
    chooser = random.Random(20261124)
    wasted: list[int] = []
    with FakeLLM(answer()) as server:
        for _ in range(20):
            requests_before, durable_before = len(server.requests), lines_in(output)
            process = start(pipeline(source, output, server), tmp)
            wait_for_open_request(server)
            time.sleep(chooser.uniform(0, 0.4))
            while process.poll() is None and server.in_flight < 1:
                time.sleep(0.001)  # the moment falls between requests: wait for the next
            if process.poll() is not None:  # it finished: nothing left to interrupt
                break
            open_requests = server.in_flight
            os.killpg(process.pid, signal.SIGKILL)
            assert open_requests >= 1, "killed while no request was open"
            process.wait()
            time.sleep(0.05)  # let the server notice the dropped connections
            paid = len(server.requests) - requests_before
            durable = lines_in(output) - durable_before
            wasted.append(paid - durable)
        final = start(pipeline(source, output, server), tmp)
        _, err = final.communicate(timeout=120)
        assert final.returncode == 0, err.decode()
        calls = len(server.requests)
        per_prompt = dict(server.prompts)
    ids = ids_in(output)
    assert sorted(ids, key=int) == [str(n) for n in range(1, count + 1)]  # each exactly once
    assert len(wasted) >= 10
    # a kill wastes at most the requests open plus the results still in the pipes
    assert all(waste <= 2 * JOBS + 1 for waste in wasted), wasted
    assert calls <= count + sum(wasted)
    repeated = sum(times - 1 for times in per_prompt.values())
    assert repeated <= sum(wasted)


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_graceful_stop_repeats_nothing(tmp: Path, signum: int, status: int) -> None:
    source = words_csv(tmp / "words.csv", 120)
    output = tmp / "out.jsonl"
    with FakeLLM(answer(0.05)) as server:
        script = pipeline(source, output, server) + '; echo "${PIPESTATUS[@]}" > status'
        process = start(script, tmp)
        wait_for_open_request(server)
        time.sleep(0.3)
        signal_members(process.pid, signum)
        _, err = process.communicate(timeout=60)
        statuses = (tmp / "status").read_text().split()
        assert statuses[1:] == [str(status), str(status)], err.decode()
        assert statuses[0] in ("0", str(status))
        assert b"run the same command again to resume" in err
        done_after_stop = len(ids_in(output))
        assert 0 < done_after_stop < 120
        assert server.answered == done_after_stop  # every answer paid for was kept
        final = start(pipeline(source, output, server), tmp)
        _, err = final.communicate(timeout=60)
        assert final.returncode == 0, err.decode()
        assert sorted(server.prompts.values()) == [1] * 120  # nothing was asked twice
    assert sorted(ids_in(output), key=int) == [str(n) for n in range(1, 121)]


def test_a_torn_last_line_is_repaired_by_the_rerun(tmp: Path) -> None:
    source = words_csv(tmp / "words.csv", 30)
    output = tmp / "out.jsonl"
    with FakeLLM(answer(0.0)) as server:
        subprocess.run(
            ["bash", "-c", pipeline(source, output, server)],
            env=environment(),
            check=True,
            cwd=tmp,
            capture_output=True,
        )
        data = output.read_bytes()
        output.write_bytes(data[: len(data) - 9])  # cut the last record short
        rerun = subprocess.run(
            ["bash", "-c", pipeline(source, output, server)],
            env=environment(),
            cwd=tmp,
            capture_output=True,
            text=True,
        )
        assert rerun.returncode == 0, rerun.stderr
        assert "removed a torn last line" in rerun.stderr
        assert len(server.requests) == 31  # only the torn record was asked again
    assert sorted(ids_in(output), key=int) == [str(n) for n in range(1, 31)]
    for line in output.read_bytes().splitlines():
        orjson.loads(line)


@pytest.fixture
def tiny_disk(tmp: Path) -> Iterator[Path]:
    mount = tmp / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=12k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_stops_cleanly_and_the_rerun_completes(tmp: Path, tiny_disk: Path) -> None:
    source = words_csv(tmp / "words.csv", 400)
    output = tiny_disk / "out.jsonl"
    with FakeLLM(answer(0.0)) as server:
        first = subprocess.run(
            ["bash", "-c", pipeline(source, output, server)],
            env=environment(),
            cwd=tmp,
            capture_output=True,
            text=True,
        )
        assert first.returncode != 0
        assert "agents-write: error: " in first.stderr
        assert "No space left on device" in first.stderr
        assert "Traceback" not in first.stderr
        kept = ids_in(output)
        assert 0 < len(kept) < 400
        for line in output.read_bytes().splitlines()[:-1]:
            orjson.loads(line)  # everything before the failure is valid
        subprocess.run(["mount", "-o", "remount,size=1m", str(tiny_disk)], check=True)
        rerun = subprocess.run(
            ["bash", "-c", pipeline(source, output, server)],
            env=environment(),
            cwd=tmp,
            capture_output=True,
            text=True,
        )
        assert rerun.returncode == 0, rerun.stderr
    assert sorted(ids_in(output), key=int) == [str(n) for n in range(1, 401)]


def test_shards_merge_into_one_run(tmp: Path) -> None:
    source = words_csv(tmp / "words.csv", 90)
    with FakeLLM(answer(0.0)) as server:
        script = (
            f"agents-read {source} | agents-map --base-url {server.url} "
            "--prompt '{word}' -q > whole.jsonl; "
            + "; ".join(
                f"agents-read {source} --shard {k}/3 | agents-map --base-url "
                f"{server.url} --prompt '{{word}}' -q > part{k}.jsonl"
                for k in (1, 2, 3)
            )
            + "; cat part*.jsonl | agents-write --append merged.jsonl"
        )
        subprocess.run(
            ["bash", "-c", script], env=environment(), cwd=tmp, check=True, capture_output=True
        )

    def by_id(path: Path) -> dict[str, Any]:
        return {str(r["_id"]): r for r in map(orjson.loads, path.read_bytes().splitlines())}

    parts = [by_id(tmp / f"part{k}.jsonl") for k in (1, 2, 3)]
    assert all(parts) and not set(parts[0]) & set(parts[1])
    assert by_id(tmp / "merged.jsonl") == by_id(tmp / "whole.jsonl")


def run_resume(
    tmp: Path, server: FakeLLM, source: Path, output: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", pipeline(source, output, server, " ".join(extra))],
        env=environment(),
        cwd=tmp,
        capture_output=True,
        text=True,
    )


def test_an_incompatible_resume_is_refused(tmp: Path) -> None:
    source = words_csv(tmp / "words.csv", 10)
    output = tmp / "out.jsonl"
    (tmp / "half.csv").write_text("word\n" + "".join(f"w{n}\n" for n in range(1, 6)))
    with FakeLLM(answer(0.0)) as server:
        assert run_resume(tmp, server, tmp / "half.csv", output).returncode == 0
        changed = subprocess.run(
            ["bash", "-c", pipeline(source, output, server).replace("'{word}'", "'Say {word}'")],
            env=environment(),
            cwd=tmp,
            capture_output=True,
            text=True,
        )
        assert changed.returncode != 0
        assert (
            f"agents-map: error: --resume {output}: the output was started with a "
            "different prompt; resuming would mix the two jobs' results"
        ) in changed.stderr
        model = run_resume(tmp, server, source, output, "--model", "other")
        assert "different model" in model.stderr
        assert len(server.requests) == 5
        more_jobs = run_resume(tmp, server, source, output, "-j", "2", "--timeout", "9")
        assert more_jobs.returncode == 0, more_jobs.stderr
        assert "skipped 5 records already done" in more_jobs.stderr
        assert len(server.requests) == 10
    assert sorted(ids_in(output), key=int) == [str(n) for n in range(1, 11)]


def test_a_changed_input_is_noticed(tmp: Path) -> None:
    output = tmp / "out.jsonl"
    with FakeLLM(answer(0.0)) as server:
        assert run_resume(tmp, server, words_csv(tmp / "a.csv", 10), output).returncode == 0
        inserted = tmp / "b.csv"
        inserted.write_text("word\nnew\n" + "".join(f"w{n}\n" for n in range(1, 11)))
        rerun = run_resume(tmp, server, inserted, output)
        assert rerun.returncode != 0
        assert (
            "the input changed since the output was started: record 1 is not what it was"
            in rerun.stderr
        )
        assert len(server.requests) == 10


def test_failed_records_are_retried_unless_kept(tmp: Path) -> None:
    source = words_csv(tmp / "words.csv", 6)
    output = tmp / "out.jsonl"
    failing = {"w2", "w5"}

    def script(request: dict[str, Any], number: int) -> Reply:
        if last_user_message(request) in failing:
            return Reply("nope", status=400)
        return Reply(f"answer {last_user_message(request)}")

    with FakeLLM(script) as server:
        first = run_resume(tmp, server, source, output)
        assert first.returncode == 3
        kept = run_resume(tmp, server, source, output, "--keep-failed")
        assert kept.returncode == 0 and len(server.requests) == 6
        failing.clear()
        retried = run_resume(tmp, server, source, output)
        assert retried.returncode == 0, retried.stderr
        assert "skipped 4 records already done; retried 2 that had failed" in retried.stderr
        assert len(server.requests) == 8
    records = [orjson.loads(line) for line in output.read_bytes().splitlines()]
    assert len(records) == 6 and not any("error" in r for r in records)


# The Makefile of docs/examples ----------------------------------------------------------------


def make(folder: Path, server: FakeLLM) -> subprocess.Popen[bytes]:
    env = {**environment(), "OPENAI_BASE_URL": server.url}
    env.pop("OPENAI_API_KEY", None)
    return subprocess.Popen(
        ["make", "-s"],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        process_group=0,
    )


def translation_script(request: dict[str, Any], number: int) -> Reply:
    word = last_user_message(request).split('"')[1]
    return Reply(
        orjson.dumps({"es": f"{word}-es", "fr": f"{word}-fr", "de": f"{word}-de"}).decode(),
        delay=0.05,
    )


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL])
def test_makefile_interrupted_then_run_again(tmp: Path, signum: int) -> None:
    whole, broken = tmp / "whole", tmp / "broken"
    for folder in (whole, broken):
        shutil.copytree(ROOT / "docs" / "examples", folder)
        words = folder / "words.csv"
        words.write_text("word,part_of_speech\n" + "".join(f"w{n},noun\n" for n in range(60)))
    with FakeLLM(translation_script) as server:
        assert make(whole, server).wait(timeout=120) == 0
        calls_whole = len(server.requests)
    with FakeLLM(translation_script) as server:
        process = make(broken, server)
        wait_for_open_request(server)
        time.sleep(0.2)
        os.killpg(process.pid, signum)
        process.wait(timeout=60)
        assert process.returncode != 0
        assert not (broken / "translations.csv").exists()  # make sees no finished target
        assert (broken / "translations.partial.csv").exists()
        in_flight = server.in_flight + JOBS * 2
        again = make(broken, server)
        _, err = again.communicate(timeout=120)
        assert again.returncode == 0, err.decode()
        assert len(server.requests) <= calls_whole + in_flight
    assert (broken / "translations.csv").read_bytes() == (whole / "translations.csv").read_bytes()
    assert not (broken / "translations.partial.csv").exists()


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_makefile_with_a_failed_stage_leaves_no_target(tmp: Path) -> None:
    folder = tmp / "job"
    shutil.copytree(ROOT / "docs" / "examples", folder)
    with FakeLLM(lambda request, number: Reply("bad key", status=401)) as server:
        failed = make(folder, server)
        failed.wait(timeout=60)
        assert failed.returncode != 0
        assert not (folder / "translations.csv").exists()
    with FakeLLM(translation_script) as server:
        assert make(folder, server).wait(timeout=120) == 0
    assert (folder / "translations.csv").exists()


@pytest.mark.parametrize("name", ["out.jsonl", "out.csv", "out.tsv", "out.json", "out.db"])
def test_every_output_format_resumes(tmp: Path, name: str) -> None:
    half = words_csv(tmp / "half.csv", 12)
    whole = words_csv(tmp / "whole.csv", 25)
    output = tmp / name
    with FakeLLM(answer(0.0)) as server:
        assert run_resume(tmp, server, half, output).returncode == 0
        rerun = run_resume(tmp, server, whole, output)
        assert rerun.returncode == 0, rerun.stderr
        assert "skipped 12 records already done" in rerun.stderr
        assert len(server.requests) == 25
    back = subprocess.run(
        [str(BIN / "agents-read"), str(output)], env=environment(), capture_output=True, check=True
    )
    ids = [str(orjson.loads(line)["_id"]) for line in back.stdout.splitlines()]
    assert sorted(ids, key=int) == [str(n) for n in range(1, 26)]
