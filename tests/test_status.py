"""--status FILE|DIR/ and agents watch: the live figures of a run, read by another process.

Against the test suite's fake server (figures, faults and timing it can be told to show); the
watcher over processes under GNU parallel --pipe, in tmux at 80 columns, and piped."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN
from fake_llm import FakeLLM, Reply, last_user_message
from test_rate_limits import environment_for_processes


def slow(seconds: float, failing: str = "") -> Any:
    """Answers that take ``seconds``, with usage; words in ``failing`` get a 400."""

    def script(request: dict[str, Any], number: int) -> Reply:
        word = last_user_message(request)
        if failing and word in failing.split():
            return Reply(status=400, body={"error": {"message": "bad word", "type": "invalid"}})
        usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        return Reply(content=f"answer {word}", delay=seconds, usage=usage)

    return script


def words(path: Path, count: int, prefix: str = "w") -> Path:
    path.write_text(
        "".join(f'{{"_id": "{prefix}{n}", "w": "{prefix}{n}"}}\n' for n in range(count))
    )
    return path


def start_map(
    tmp: Path, server: FakeLLM, source: Path, status: str, *extra: str
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(BIN / "agents-map"), "--base-url", server.url, "--prompt", "{w}", "-q",
         "--status", status, "--price", "1,2", *extra],
        stdin=source.open("rb"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env=environment_for_processes(tmp),
    )  # fmt: skip


def read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def test_a_reader_never_sees_a_torn_document_and_the_figures_are_right(tmp: Path) -> None:
    status = tmp / "status.json"
    seen: list[dict[str, Any]] = []
    torn: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                text = status.read_text()
            except FileNotFoundError:
                continue
            try:
                seen.append(json.loads(text))
            except ValueError:
                torn.append(text)

    with FakeLLM(slow(0.1, failing="w7 w13")) as server:
        thread = threading.Thread(target=reader)
        thread.start()
        process = start_map(tmp, server, words(tmp / "in.jsonl", 60), str(status), "-j", "4",
                            "--stats", str(tmp / "stats.json"), "--max-retries", "0")  # fmt: skip
        assert process.wait(timeout=60) == 3  # (two records failed)
        stop.set()
        thread.join()
    assert not torn
    running = [document for document in seen if document["state"] == "running"]
    assert len({document["updated"] for document in running}) >= 2  # rewritten as it went
    done = [document["records"]["done"] for document in running if "records" in document]
    assert done == sorted(done) and max(done) > 0
    final = read(status)
    stats = read(tmp / "stats.json")
    assert final["state"] == "finished"
    assert final["outcome"]["exit_status"] == 3 and final["outcome"]["stopped"] is None
    assert final["records"] == {"done": 60, "succeeded": 58, "failed": 2, "total": 60, "held": 0}
    assert final["errors"] == stats["errors"] and sum(final["errors"].values()) == 2
    assert final["tokens"]["total"] == stats["tokens"]["total"] == 58 * 15
    assert final["cost_usd"] == stats["cost_usd"]
    assert final["requests"] == stats["requests"]
    assert "item #" in final["last_error"]
    assert final["limits"]["jobs"] == 4 and final["in_flight"] == 0
    assert final["process"]["pid"] == process.pid


def test_a_folder_holds_one_file_per_process_and_the_watcher_adds_them_up(tmp: Path) -> None:
    """Four processes under GNU parallel --pipe, one --status folder: agents watch, piped,
    prints JSON lines whose totals are the sums of the processes', and exits 0 when all
    finished."""
    if shutil.which("parallel") is None:
        pytest.skip("GNU parallel is not installed (Debian: apt-get install parallel)")
    folder = tmp / "status"
    folder.mkdir()
    words(tmp / "in.jsonl", 200)
    env = environment_for_processes(tmp)
    with FakeLLM(slow(0.02)) as server:
        job = subprocess.Popen(
            ["bash", "-o", "pipefail", "-c",
             f"parallel --pipe -N 50 -j 4 agents-map --base-url {server.url} --prompt '{{w}}' "
             f"-q --price 1,2 --status {folder}/ < {tmp}/in.jsonl > {tmp}/out.jsonl"],
            env=env,
        )  # fmt: skip
        watcher = subprocess.run(
            [str(BIN / "agents"), "watch", str(folder), "--interval", "0.3"],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
        assert job.wait(timeout=60) == 0
    assert watcher.returncode == 0, watcher.stderr
    lines = [json.loads(line) for line in watcher.stdout.splitlines()]
    assert len(lines) >= 2
    last = lines[-1]
    (only,) = last["jobs"]
    assert only["processes"] == 4 and only["finished"] == 4
    assert only["records"]["done"] == 200 == sum(p["records"]["done"] for p in only["each"])
    assert only["cost_usd"] == pytest.approx(sum(p["cost_usd"] for p in only["each"]))
    assert {p["exit_status"] for p in only["each"]} == {0}
    assert len(list(folder.glob("*.json"))) == 4
    for line in lines:  # every line's totals are its processes' sums
        for job_totals in line["jobs"]:
            each = job_totals["each"]
            assert job_totals["records"]["done"] == sum(
                (p["records"] or {}).get("done", 0) for p in each
            )


def test_a_cap_ctrl_c_and_kill_9_each_leave_the_right_outcome(tmp: Path) -> None:
    with FakeLLM(slow(0.05)) as server:
        capped = start_map(tmp, server, words(tmp / "a.jsonl", 400), str(tmp / "cap.json"),
                           "--max-cost", "0.0003", "-j", "2")  # fmt: skip
        interrupted = start_map(
            tmp, server, words(tmp / "b.jsonl", 400, "b"), str(tmp / "int.json")
        )
        killed = start_map(tmp, server, words(tmp / "c.jsonl", 400, "c"), str(tmp / "kill.json"))
        time.sleep(1.5)
        interrupted.send_signal(signal.SIGINT)
        killed.kill()
        assert capped.wait(timeout=60) == 4
        assert interrupted.wait(timeout=60) == 130
        killed.wait()
        cap = read(tmp / "cap.json")
        assert cap["outcome"]["exit_status"] == 4 and cap["outcome"]["stopped"] == "max_cost"
        assert read(tmp / "int.json")["outcome"]["exit_status"] == 130
        left = read(tmp / "kill.json")
        assert left["state"] == "running" and left["outcome"] is None
        watcher = subprocess.run(
            [str(BIN / "agents"), "watch", str(tmp / "cap.json"), str(tmp / "int.json"),
             str(tmp / "kill.json"), "--interval", "0.2"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    states = {p["path"]: (p["state"], p["exit_status"])
              for p in json.loads(watcher.stdout.splitlines()[-1])["jobs"][0]["each"]}  # fmt: skip
    assert states == {
        str(tmp / "cap.json"): ("finished", 4),
        str(tmp / "int.json"): ("finished", 130),
        str(tmp / "kill.json"): ("stale", None),  # (its PID is gone: at once)
    }
    assert watcher.returncode == 1  # a process went stale: it never said how it ended


def test_a_status_folder_that_does_not_exist_is_a_usage_error(tmp: Path) -> None:
    done = subprocess.run(
        [str(BIN / "agents-map"), "--base-url", "http://127.0.0.1:9/v1", "--prompt", "{w}",
         "--status", str(tmp / "missing" / "status.json")],
        input='{"_id": 1, "w": "x"}\n', capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2 and "mkdir -p" in done.stderr


def test_the_watcher_in_tmux_at_80_columns(tmp: Path) -> None:
    """On a terminal the view is redrawn in place, every line within 80 columns."""
    tmux = shutil.which("tmux")
    if tmux is None:
        pytest.skip("tmux is not installed (Debian: apt-get install tmux)")
    folder = tmp / "status"
    folder.mkdir()
    socket_name = f"agents-watch-{os.getpid()}"
    with FakeLLM(slow(0.05, failing="w3")) as server:
        runs = [start_map(tmp, server, words(tmp / f"in{k}.jsonl", 150, f"w{k}x" if k else "w"),
                          f"{folder}/", "-j", "2", "--max-retries", "0") for k in range(2)]  # fmt: skip
        time.sleep(0.5)
        command = f"{BIN}/agents watch {folder} --interval 0.2; sleep 30"
        subprocess.run([tmux, "-L", socket_name, "new-session", "-d", "-x", "80", "-y", "24",
                        command], check=True, env=environment_for_processes(tmp))  # fmt: skip
        try:
            time.sleep(2.0)
            screen = subprocess.run([tmux, "-L", socket_name, "capture-pane", "-p"],
                                    capture_output=True, text=True, check=True).stdout  # fmt: skip
            for run in runs:
                run.wait(timeout=60)
            time.sleep(1.0)
            after = subprocess.run([tmux, "-L", socket_name, "capture-pane", "-p"],
                                   capture_output=True, text=True, check=True).stdout  # fmt: skip
        finally:
            subprocess.run([tmux, "-L", socket_name, "kill-server"], check=False)
    for text in (screen, after):
        lines = [line for line in text.splitlines() if line.strip()]
        assert all(len(line) <= 80 for line in lines), lines
        assert sum(line.startswith("job ") for line in lines) == 1, lines  # drawn once, in place
    assert "2 running" in screen and "/min" in screen
    assert "2 finished" in after and "finished 3" in after  # (w3 failed: exit status 3)
    assert "last error: " in after


def test_agents_process_keeps_a_status_file_and_notifies(tmp: Path) -> None:
    """The one-command interface takes the same flags, and agents resume keeps them."""
    source = words(tmp / "in.jsonl", 30)
    told = tmp / "told.json"
    with FakeLLM(slow(0.01)) as server:
        done = subprocess.run(
            [str(BIN / "agents"), "process", str(source), str(tmp / "out.csv"), "--base-url",
             server.url, "--prompt", "{w}", "-q", "--status", str(tmp / "status.json"),
             "--notify", f"cmd:cat > {told}", "--price", "1,2"],
            capture_output=True, text=True, timeout=60, env=environment_for_processes(tmp),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        status = read(tmp / "status.json")
        assert status["process"]["command"] == "agents" and status["outcome"]["exit_status"] == 0
        assert status["records"]["done"] == 30
        assert json.loads(told.read_text())["outcome"]["exit_status"] == 0
        told.unlink()
        again = subprocess.run(
            [str(BIN / "agents"), "resume", str(tmp / "out.csv")],
            capture_output=True, text=True, timeout=60, env=environment_for_processes(tmp),
        )  # fmt: skip
        assert again.returncode == 0, again.stderr
    assert read(tmp / "status.json")["records"]["done"] == 30  # (all done before: none sent)
    assert json.loads(told.read_text())["outcome"]["exit_status"] == 0


def test_a_status_path_that_holds_something_else_is_refused_untouched(tmp: Path) -> None:
    """--status never writes over data: the input, an output, another option's file, any file
    that is not a status document, a device; nor where it cannot write (said at the start)."""
    data = tmp / "in.jsonl"
    data.write_text('{"_id": 1, "w": "x"}\n')
    other = tmp / "notes.txt"
    other.write_text("mine\n")
    fifo = tmp / "fifo.json"  # (not a regular file; a device, such as /dev/null, is refused
    os.mkfifo(fifo)  # alike, but a test must not risk the machine's own)
    for path, extra in (
        (data, []),
        (other, []),
        (fifo, []),
        (tmp / "stats.json", ["--stats", str(tmp / "stats.json")]),
        (Path("/proc/self/status.json"), []),
    ):
        done = subprocess.run(
            [str(BIN / "agents-map"), "--base-url", "http://127.0.0.1:9/v1", "--prompt", "{w}",
             "--status", str(path), *extra],
            stdin=data.open("rb"), capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert done.returncode == 2, (path, done.stderr)
        assert "--status" in done.stderr
    assert data.read_text() == '{"_id": 1, "w": "x"}\n' and other.read_text() == "mine\n"
    assert fifo.is_fifo()
    assert not (tmp / "stats.json").exists()
    empty = tmp / "empty.json"
    empty.touch()  # (an empty file, or a status document of an earlier run, is written over)
    with FakeLLM(slow(0.0)) as server:
        for _ in range(2):
            process = start_map(tmp, server, data, str(empty))
            assert process.wait(timeout=30) == 0
    assert read(empty)["outcome"]["exit_status"] == 0


def test_the_watcher_waits_for_the_next_process_of_parallel_j_1(tmp: Path) -> None:
    """parallel -j 1 starts each process as the one before ends: the watcher waits for the
    next instead of leaving after the first. A glob of folders ending in / and one file named
    twice count each process once."""
    if shutil.which("parallel") is None:
        pytest.skip("GNU parallel is not installed (Debian: apt-get install parallel)")
    folder = tmp / "status"
    folder.mkdir()
    words(tmp / "in.jsonl", 60)
    env = environment_for_processes(tmp)
    with FakeLLM(slow(0.02)) as server:
        job = subprocess.Popen(
            ["bash", "-o", "pipefail", "-c",
             f"parallel --pipe -N 20 -j 1 agents-map --base-url {server.url} --prompt '{{w}}' "
             f"-q --price 1,2 --status {folder}/ < {tmp}/in.jsonl > /dev/null"],
            env=env,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not list(folder.glob("*.json")):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        (first,) = folder.glob("*.json")
        watcher = subprocess.run(
            [str(BIN / "agents"), "watch", f"{tmp}/stat?s/", str(first), "--interval", "0.2"],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
        assert job.wait(timeout=60) == 0
    assert watcher.returncode == 0, watcher.stdout[-2000:]
    (last,) = json.loads(watcher.stdout.splitlines()[-1])["jobs"]
    assert last["processes"] == 3 and last["finished"] == 3
    assert last["records"] == {"done": 60, "succeeded": 60, "failed": 0, "total": 60}


def test_a_killed_run_resumed_is_superseded(tmp: Path) -> None:
    """A run killed with -9, then the same command again: the killed one is superseded (what it
    did counts, not how it ended, nor its total), so the watcher says the job succeeded."""
    folder = tmp / "status"
    folder.mkdir()
    words(tmp / "in.jsonl", 80)
    env = environment_for_processes(tmp)
    with FakeLLM(slow(0.02)) as server:
        command = (
            f"agents-map --base-url {server.url} --prompt '{{w}}' -q -j 2 --status {folder}/ "
            f"--resume {tmp}/out.jsonl < {tmp}/in.jsonl | agents-write --append {tmp}/out.jsonl"
        )
        killed = subprocess.Popen(["bash", "-o", "pipefail", "-c", command], env=env,
                                  start_new_session=True)  # fmt: skip
        time.sleep(1.0)
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait()
        again = subprocess.run(["bash", "-o", "pipefail", "-c", command], env=env, timeout=60)
        assert again.returncode == 0
    watcher = subprocess.run(
        [str(BIN / "agents"), "watch", str(folder), "--interval", "0.2"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert watcher.returncode == 0, watcher.stdout[-2000:]
    (last,) = json.loads(watcher.stdout.splitlines()[-1])["jobs"]
    assert [(p["state"], p["superseded"]) for p in last["each"]] == [
        ("stale", True),
        ("finished", False),
    ]
    assert last["records"]["total"] == 80 == last["records"]["done"]  # (the rerun's: all)
    assert last["each"][1]["records"]["done"] == 80


def test_status_and_stats_never_take_the_results_file(tmp: Path) -> None:
    """`> out.jsonl --status out.jsonl`: the shell has emptied the file already, so it looks
    new; writing the figures there would lose every result. Refused, as is a file another
    running process writes, and agents process's OUTPUT and settings."""
    words(tmp / "in.jsonl", 5)
    for flag in ("--status", "--stats"):
        done = subprocess.run(
            ["bash", "-c", f"{BIN}/agents-map --base-url http://127.0.0.1:9/v1 --prompt '{{w}}' "
             f"{flag} {tmp}/out.jsonl < {tmp}/in.jsonl > {tmp}/out.jsonl"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert done.returncode == 2 and "stdout" in done.stderr, (flag, done.stderr)
    with FakeLLM(slow(1.5)) as server:
        first = start_map(tmp, server, tmp / "in.jsonl", str(tmp / "shared.json"))
        time.sleep(0.5)
        second = start_map(tmp, server, tmp / "in.jsonl", str(tmp / "shared.json"))
        assert second.wait(timeout=30) == 2
        assert second.stderr is not None and b"--status DIR/" in second.stderr.read()
        assert first.wait(timeout=30) == 0
        for status, says in (("out.csv", "OUTPUT"), ("out.csv.agents-process.json", "settings")):
            done = subprocess.run(
                [str(BIN / "agents"), "process", str(tmp / "in.jsonl"), str(tmp / "out.csv"),
                 "--base-url", server.url, "--prompt", "{w}", "--status", str(tmp / status)],
                capture_output=True, text=True, timeout=30, env=environment_for_processes(tmp),
            )  # fmt: skip
            assert done.returncode == 2 and says in done.stderr, (status, done.stderr)


def test_resumed_pieces_and_reruns_are_told_apart(tmp: Path) -> None:
    """parallel --pipe -j 1 pieces resuming one output are not reruns of each other (their
    failures count); a rerun with --keep-failed counts the error records it keeps as failed;
    one with --force-resume (another prompt) supersedes the runs before."""
    if shutil.which("parallel") is None:
        pytest.skip("GNU parallel is not installed (Debian: apt-get install parallel)")
    folder = tmp / "status"
    folder.mkdir()
    words(tmp / "in.jsonl", 30)
    env = environment_for_processes(tmp)

    def run(command: str) -> int:
        return subprocess.run(["bash", "-o", "pipefail", "-c", command], env=env,
                              timeout=60).returncode  # fmt: skip

    def mapping(url: str, *extra: str) -> str:
        return (f"agents-map --base-url {url} --prompt '{{w}}' -q --max-retries 0 "
                f"--resume {tmp}/out.jsonl --status {folder}/ {' '.join(extra)}")  # fmt: skip

    def watch() -> tuple[int, dict[str, Any]]:
        done = subprocess.run([str(BIN / "agents"), "watch", str(folder), "--interval", "0.2"],
                              capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
        return done.returncode, json.loads(done.stdout.splitlines()[-1])["jobs"]

    write = f"agents-write --append {tmp}/out.jsonl"
    with FakeLLM(slow(0.0, failing="w1 w2 w3")) as server:
        pieces = f"parallel --pipe -N 10 -j 1 {mapping(server.url)} < {tmp}/in.jsonl | {write}"
        assert run(pieces) != 0
        status, jobs = watch()
        (job,) = jobs
        assert status == 3 and not any(p["superseded"] for p in job["each"])
        assert job["records"] == {"done": 30, "succeeded": 27, "failed": 3, "total": 30}
        assert run(pieces) != 0  # (the same pieces again: each reruns its own, still failing)
        status, jobs = watch()
        (job,) = jobs
        assert status == 3 and sum(p["superseded"] for p in job["each"]) == 3
        assert job["records"] == {"done": 30, "succeeded": 27, "failed": 3, "total": 30}
        # shards resuming another output (and status folder), then shard 1 again
        shards = mapping(server.url).replace(f"{tmp}/out.jsonl", f"{tmp}/sharded.jsonl")
        shards = shards.replace(f"{folder}/", f"{tmp}/shards/")
        (tmp / "shards").mkdir()
        for k in (1, 2, 3, 1):
            run(f"agents-read {tmp}/in.jsonl --shard {k}/3 | {shards} "
                f"| agents-write --append {tmp}/sharded.jsonl")  # fmt: skip
        shown = subprocess.run([str(BIN / "agents"), "watch", f"{tmp}/shards", "--interval",
                                "0.2"], capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
        each = json.loads(shown.stdout.splitlines()[-1])["jobs"][0]["each"]
        assert [p["superseded"] for p in each] == [True, False, False, False]
        assert shown.returncode == 3  # (shards 2 and 3 are not shard 1's rerun: theirs stay)
        kept = f"{mapping(server.url, '--keep-failed')} < {tmp}/in.jsonl | {write}"
        assert run(kept) == 0  # (nothing to do: every record is in the output)
        status, jobs = watch()
        newest = max(jobs[0]["each"], key=lambda p: p["updated"])
        assert newest["records"]["failed"] == 3 and newest["records"]["held"] == 30
        assert status == 3  # (the pieces that failed are not superseded: the failures stay)
    with FakeLLM(slow(0.0)) as server:
        forced = mapping(server.url, "--force-resume").replace("'{w}'", "'again: {w}'")
        forced = forced.replace(f"--status {folder}/", f"--status {folder}/ --keep-failed")
        forced = forced.replace(" --keep-failed", "")
        assert run(f"{forced} < {tmp}/in.jsonl | {write}") == 0
    status, jobs = watch()
    assert status == 0, jobs  # (the forced rerun redid the failures: every run before it is
    # superseded, whatever its job)


def test_a_run_that_failed_every_record_is_superseded_by_its_fixed_rerun(tmp: Path) -> None:
    """The first run's prompt was wrong (every record it tried failed, and it stopped); the
    same job run again with the prompt fixed: the watcher says the job succeeded."""
    folder = tmp / "status"
    folder.mkdir()
    source = words(tmp / "in.jsonl", 20)

    def refusing_bad(request: dict[str, Any], number: int) -> Reply:
        if last_user_message(request).startswith("bad"):
            return Reply(status=400, body={"error": {"message": "bad prompt"}})
        return Reply(content="fine")

    with FakeLLM(refusing_bad) as server:
        for prompt in ("bad {w}", "{w}"):
            done = subprocess.run(
                [str(BIN / "agents"), "process", str(source), str(tmp / "out.jsonl"),
                 "--base-url", server.url, "--prompt", prompt, "-q", "--max-retries", "0",
                 "--status", f"{folder}/", "--force-resume"],
                capture_output=True, text=True, timeout=60, env=environment_for_processes(tmp),
            )  # fmt: skip
            assert done.returncode == (0 if prompt == "{w}" else 1), done.stderr
    watcher = subprocess.run([str(BIN / "agents"), "watch", str(folder), "--interval", "0.2"],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert watcher.returncode == 0, watcher.stdout[-1500:]


def test_stats_never_takes_another_file_of_the_run(tmp: Path) -> None:
    """--stats is written whole at the end: the --resume output, the --errors or --log-file
    file, the input, a status file, agents process's work file are refused before anything is
    sent, and left as they were."""
    source = words(tmp / "in.jsonl", 5)
    (tmp / "out.jsonl").write_text('{"_id": "w0", "result": "paid"}\n')
    base = [str(BIN / "agents-map"), "--base-url", "http://127.0.0.1:9/v1", "--prompt", "{w}"]
    for extra in (
        ["--resume", str(tmp / "out.jsonl"), "--stats", str(tmp / "out.jsonl")],
        ["--errors", str(tmp / "e.jsonl"), "--stats", str(tmp / "e.jsonl")],
        ["--log-file", str(tmp / "log.txt"), "--stats", str(tmp / "log.txt")],
        ["--stats", str(source)],
    ):
        done = subprocess.run([*base, *extra], stdin=source.open("rb"), capture_output=True,
                              text=True, timeout=30)  # fmt: skip
        assert done.returncode == 2 and "--stats" in done.stderr, (extra, done.stderr)
    assert (tmp / "out.jsonl").read_text() == '{"_id": "w0", "result": "paid"}\n'
    assert source.read_text().count("\n") == 5
    work = f"{tmp}/p.jsonl.agents-work.jsonl"
    done = subprocess.run(
        [str(BIN / "agents"), "process", str(source), f"{tmp}/p.jsonl", "--base-url",
         "http://127.0.0.1:9/v1", "--prompt", "{w}", "--stats", work],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2 and "--stats" in done.stderr, done.stderr


@pytest.mark.parametrize(("width", "height"), [(5, 1), (19, 2), (40, 3), (200, 50)])
def test_the_view_fits_any_terminal(tmp: Path, width: int, height: int) -> None:
    """Every line within the width, no more lines than the height, and the job's own line
    first however low the terminal (a long error, wide characters and several processes)."""
    from agents.watch.snapshot import take
    from agents.watch.view import screen

    folder = tmp / "status"
    folder.mkdir()
    with FakeLLM(slow(0.0, failing="w3")) as server:
        for k in range(3):
            process = start_map(tmp, server, words(tmp / f"in{k}.jsonl", 5), f"{folder}/",
                                "--max-retries", "0")  # fmt: skip
            assert process.wait(timeout=30) == 3
    lines = screen(take([str(folder)]), width, height, [str(folder)])
    from agents.map.progress import columns

    assert 1 <= len(lines) <= height
    assert all(columns(line) <= width for line in lines), lines
    assert lines[0].startswith("job"[:width])
